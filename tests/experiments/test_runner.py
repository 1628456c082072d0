"""The generic ablation runner on a fake study: order, trunks, aliases, resume, statistics, tables."""
import json
import os

import pytest

from minimaskrcnn.experiments.runner import (
    Comparison,
    Run,
    StudyResults,
    mean_std,
    run_study,
    training_order,
)


class FakeStudy:
    """Trains nothing: a run's 'weights' are a file holding its parent's value + its own offset."""

    name = "fake"
    metrics = ("mask_AP", "box_AP")
    reference = {"better": {"mask_AP": 30.0}}
    comparisons = (Comparison("better vs worse", "better", "worse", "mask_AP", reference=5.0),
                   Comparison("noisy", "noisy", "worse", "mask_AP"))

    def __init__(self):
        self.runs = (
            Run("trunk", report=False, options={"offset": 0.1}),
            Run("better", parent="trunk", options={"offset": 0.3}),
            Run("worse", parent="trunk", options={"offset": 0.2}),
            Run("noisy", parent="trunk", options={"offset": 0.2, "noise": 0.05}),
            Run("baseline", same_as="better"),
        )
        self.trained = []

    def setup(self):
        return {"data": "none"}

    def train(self, run, seed, run_dir, parent_dir):
        self.trained.append((seed, run.name))
        base = 0.0
        if parent_dir is not None:
            with open(os.path.join(parent_dir, "w.json")) as f:
                base = json.load(f)
        value = base + run.options["offset"] + 0.001 * seed + run.options.get("noise", 0.0) * (-1) ** seed
        with open(os.path.join(run_dir, "w.json"), "w") as f:
            json.dump(value, f)

    def evaluate(self, run, seed, run_dir):
        with open(os.path.join(run_dir, "w.json")) as f:
            value = json.load(f)
        return {"mask_AP": value, "box_AP": value / 2}


def test_parents_first_and_only_what_is_needed():
    study = FakeStudy()
    assert [r.name for r in training_order(study.runs)] == ["trunk", "better", "worse", "noisy"]
    assert [r.name for r in training_order(study.runs, only=["baseline"])] == ["trunk", "better"]
    with pytest.raises(ValueError, match="unknown runs"):
        training_order(study.runs, only=["nope"])
    with pytest.raises(ValueError, match="unknown parent"):
        training_order([Run("a", parent="b")])
    with pytest.raises(ValueError, match="twice"):
        training_order([Run("a"), Run("a")])
    with pytest.raises(ValueError, match="cycle"):
        training_order([Run("a", parent="b"), Run("b", parent="a")])
    with pytest.raises(ValueError, match="same_as"):
        training_order([Run("t", report=False), Run("a", same_as="t")])


def test_run_study_trains_each_run_once_per_seed_and_resumes(tmp_path):
    study = FakeStudy()
    lines = []
    results = run_study(study, [0, 1, 2], tmp_path, command="minimaskrcnn ablate fake", log=lines.append)
    assert len(study.trained) == 3 * 4 and len(lines) == 12  # the alias is never trained
    assert list(results.variants) == ["better", "worse", "noisy", "baseline"]  # trunks are not reported
    assert results.variants["baseline"] == results.variants["better"]
    assert results.variants["better"]["seeds"] == [0, 1, 2]
    assert results.variants["better"]["mask_AP"] == pytest.approx([0.4, 0.402, 0.404])
    assert results.setup["data"] == "none" and results.setup["seeds"] == [0, 1, 2]
    # a second call finds every result on disk and trains nothing; a deleted result is redone
    os.remove(tmp_path / "seed_1" / "worse" / "result.json")
    again = run_study(study, [0, 1, 2], tmp_path, log=lines.append)
    assert study.trained[12:] == [(1, "worse")]
    assert again.variants == results.variants


def test_runs_made_with_other_settings_are_refused(tmp_path):
    study = FakeStudy()
    run_study(study, [0], tmp_path, log=lambda s: None)
    study.setup = lambda: {"data": "other"}
    with pytest.raises(ValueError, match="other settings"):
        run_study(study, [0], tmp_path, log=lambda s: None)
    assert len(study.trained) == 4  # nothing trained on top of the old runs


def test_a_shared_trunk_is_trained_once_for_every_seed(tmp_path):
    study = FakeStudy()
    study.runs = (Run("trunk", report=False, shared=True, options={"offset": 0.1}),) + study.runs[1:]
    results = run_study(study, [0, 1, 2], tmp_path, log=lambda s: None)
    assert study.trained.count((0, "trunk")) == 1 and len(study.trained) == 1 + 3 * 3
    assert (tmp_path / "shared" / "trunk" / "result.json").is_file() and not (tmp_path / "seed_1" / "trunk").exists()
    # every seed's variants start from the one trunk (0.1, trained with seed 0)
    assert results.variants["better"]["mask_AP"] == pytest.approx([0.4, 0.401, 0.402])
    seconds = results.setup["train_seconds"]
    again = run_study(study, [0, 1, 2], tmp_path, log=lambda s: None)  # counted once, not once per seed
    assert len(study.trained) == 10 and again.setup["train_seconds"] == pytest.approx(seconds, abs=0.2)
    with pytest.raises(ValueError, match="shared"):
        training_order([Run("t", report=False), Run("a", parent="t", shared=True)])


def test_compare_pairs_seeds_and_states_the_verdict(tmp_path):
    results = run_study(FakeStudy(), [0, 1, 2], tmp_path, log=lambda s: None)
    c = results.compare(FakeStudy.comparisons[0])
    assert c["diffs"] == pytest.approx([10.0, 10.0, 10.0]) and c["std"] == pytest.approx(0.0, abs=1e-9)
    assert c["resolved"] and c["verdict"].startswith("better better")
    noisy = results.compare(FakeStudy.comparisons[1])  # +5, -5, +5 points: mean 1.7, std 5.8
    assert not noisy["resolved"] and noisy["verdict"].startswith("not resolved")
    table = results.markdown_table(FakeStudy.reference)
    assert "| `better` | 3 | 40.2 ± 0.2 | 20.1 ± 0.1 | mask AP 30.0 |" in table
    comparisons = results.markdown_comparisons(FakeStudy.comparisons)
    assert "+10.0 ± 0.0 (n=3) | +5.0 |" in comparisons


def test_json_round_trip_and_checks(tmp_path):
    results = run_study(FakeStudy(), [0, 1], tmp_path, command="cmd", log=lambda s: None)
    data = json.loads(json.dumps(results.to_json()))
    assert set(data) == {"command", "setup", "variants"} and data["command"] == "cmd"
    back = StudyResults.from_json(data)
    assert back.metrics == ["mask_AP", "box_AP"] and back.variants == results.variants
    data["variants"]["better"]["mask_AP"].pop()
    with pytest.raises(ValueError, match="values of 'mask_AP'"):
        StudyResults.from_json(data)


def test_mean_std():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_std([4.0]) == (4.0, 0.0)
