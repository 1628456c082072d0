"""runlog.py: the run log on disk and in memory, the rows made from each step, the curves."""
import json

import pytest

from minimaskrcnn.runlog import CURVES_NAME, LOG_NAME, LossMeter, RunLog, read_log


def test_append_read_and_cut_back_to_a_checkpoint(tmp_path):
    log = RunLog(str(tmp_path))
    assert log.read() == []  # no file yet
    for step in (1, 2, 3):
        log.append({"step": step, "loss": 1.0 / step})
    log.append({"step": 3, "val_segm_AP": 0.5})
    assert log.read() == log.rows == read_log(str(tmp_path)) and len(log.rows) == 4
    with open(tmp_path / LOG_NAME, "a") as f:
        f.write('{"step": 4, "lo')  # a crash in the middle of a line
    assert [r["step"] for r in log.read()] == [1, 2, 3, 3]  # the cut line is dropped
    log.cut(2)  # resumed from the step-2 checkpoint
    assert [r["step"] for r in log.rows] == [1, 2]
    assert [json.loads(line)["step"] for line in (tmp_path / LOG_NAME).read_text().splitlines()] == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOG_NAME]  # no temporary file left
    with pytest.raises(FileNotFoundError):
        read_log(str(tmp_path / "elsewhere"))


def test_plot_writes_the_curves(tmp_path):
    log = RunLog(str(tmp_path))
    log.plot()
    assert not (tmp_path / CURVES_NAME).exists()  # nothing to draw yet
    for step in range(1, 6):
        log.append({"step": step, "loss": 2.0 / step, "loss_mask": 1.0 / step})
    log.plot()
    assert (tmp_path / CURVES_NAME).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_loss_meter_rows_are_means_over_the_window():
    meter = LossMeter()
    meter.update({"loss": 1.0, "loss_mask": 0.5, "lr": 0.01}, num_images=2)
    meter.update({"loss": 3.0, "loss_mask": 1.5, "lr": 0.02}, num_images=2)
    text = meter.postfix()
    assert "loss=1.200" in text and "mask=0.600" in text and "lr=0.011" in text and "img/s" in text  # smoothed
    row = meter.row()
    assert list(row) == ["loss", "loss_mask", "lr", "images_per_s"]
    assert row["loss"] == 2.0 and row["loss_mask"] == 1.0 and row["lr"] == pytest.approx(0.015)
    assert row["images_per_s"] > 0
    meter.update({"loss": 5.0}, num_images=1)
    assert meter.row()["loss"] == 5.0  # a new window
