"""The Deep-MAC study runner on a tiny setting: every arm trains, the results file has the issue's format,
finished runs are reused."""
import json

import pytest

from minimaskrcnn.experiments import deepmac


@pytest.mark.slow
def test_the_runner_writes_the_results_file_and_reuses_runs(tmp_path, capsys):
    out = tmp_path / "results" / "deepmac.json"
    argv = ["--quick", "--seeds", "0", "--work-dir", str(tmp_path / "work"), "--out", str(out)]
    assert deepmac.main(argv) == 0
    results = json.loads(out.read_text())
    assert set(results) == {"command", "setup", "arms"}
    assert results["command"] == "python -m minimaskrcnn.experiments.deepmac " + " ".join(argv)
    assert list(results["arms"]) == ["proposals_fcn", "gtbox_fcn", "proposals_hourglass", "gtbox_hourglass"]
    for arm, entry in results["arms"].items():
        assert set(entry) == {"seeds", "unseen_mask_AP", "unseen_gt_box_mask_IoU", "seen_mask_AP"}, arm
        assert entry["seeds"] == [0]
        for metric in deepmac.METRICS:
            assert set(entry[metric]) == {"mean", "std", "values"} and len(entry[metric]["values"]) == 1
    setup = results["setup"]
    assert setup["steps"] == deepmac.QUICK_SETUP.steps and setup["seen"] == ["circle", "square", "triangle"]
    assert setup["deepmac_reference"]["unseen_mask_AP"]["gtbox_hourglass"] == 33.1
    # the same number of mask-head examples per step in every arm (one per object with a mask)
    examples = {arm: e["mask_examples_per_step"]["mean"] for arm, e in setup["other_metrics"].items()}
    assert len({round(v, 6) for v in examples.values()}) <= 2 and min(examples.values()) > 0
    assert examples["gtbox_fcn"] == examples["gtbox_hourglass"] >= examples["proposals_fcn"]
    table = capsys.readouterr().out
    assert "gtbox_hourglass" in table and "33.1" in table
    # a second call reuses the four finished runs: the same numbers
    run_dirs = sorted(p.name for p in (tmp_path / "work" / "runs").iterdir())
    assert run_dirs == sorted(f"{a}-seed0" for a in deepmac.ARMS)
    assert deepmac.main(argv) == 0
    again = json.loads(out.read_text())
    assert again["arms"] == results["arms"]


def test_unknown_arm_is_refused(capsys):
    with pytest.raises(SystemExit):
        deepmac.main(["--arms", "gtbox_unet"])
    assert "unknown arm" in capsys.readouterr().err


def test_a_diverged_run_is_reported_and_left_out_of_the_means(tmp_path, monkeypatch):
    from minimaskrcnn import train

    def diverge(self, *args, **kwargs):
        raise train.NonFiniteLossError(3, {"loss": float("nan")}, None, None, None, None)

    monkeypatch.setattr(train.Trainer, "fit", diverge)
    setup = deepmac.QUICK_SETUP
    results = deepmac.run_study(setup, [0], ["gtbox_fcn"], str(tmp_path), str(tmp_path / "r.json"), "cmd",
                                log=lambda line: None)
    assert results["setup"]["failed_runs"][0]["arm"] == "gtbox_fcn"
    assert "non-finite loss at step 3" in results["setup"]["failed_runs"][0]["error"]
    entry = results["arms"]["gtbox_fcn"]["unseen_mask_AP"]
    assert entry == {"mean": None, "std": None, "values": [None]}
    assert "gtbox_fcn" in deepmac.format_table(results)
