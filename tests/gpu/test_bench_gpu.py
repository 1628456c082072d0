"""benchmarks/bench_gpu.py without a GPU: it imports, parses its arguments, makes its data, and
refuses clearly (exit status 2, nothing measured) when there is no GPU."""
import importlib.util
import os

import numpy as np
import pytest
from fake_cupy import simulated

PATH = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "bench_gpu.py")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_arguments(bench):
    args = bench.parse_args([])
    assert args.image_size == (800, 1066) and args.batch_size == 2 and args.only == list(bench.CASES)
    args = bench.parse_args(["--only", "nms", "conv2d", "--image-size", "512x640", "--repeats", "3"])
    assert args.only == ["nms", "conv2d"] and args.image_size == (512, 640) and args.repeats == 3
    for bad in (["--image-size", "800"], ["--only", "resnet"], ["--repeats", "0"]):
        with pytest.raises(SystemExit) as e:
            bench.parse_args(bad)
        assert e.value.code == 2


def test_data(bench):
    rng = np.random.default_rng(0)
    rois = bench.make_rois(rng, 64, 2, 800, 1088)
    assert rois.shape == (64, 5) and set(np.unique(rois[:, 0])) <= {0, 1}
    assert (rois[:, 3] >= rois[:, 1]).all() and (rois[:, 4] <= 800).all()
    boxes, scores = bench.make_boxes(rng, 500)
    assert boxes.shape == (500, 4) and scores.shape == (500,) and (boxes[:, 2:] > boxes[:, :2]).all()
    images, targets = bench.make_batch(rng, 2, (64, 96))
    assert [im.shape for im in images] == [(3, 64, 96)] * 2
    t = targets[0]
    assert t["boxes"].shape == (4, 4) and t["masks"].shape == (4, 64, 96) and t["labels"].min() >= 1
    # each mask is its box
    for box, mask in zip(t["boxes"].astype(int), t["masks"]):
        assert mask.sum() == (box[2] - box[0]) * (box[3] - box[1]) == mask[box[1]:box[3], box[0]:box[2]].sum()


def test_timing_is_a_median_of_synchronised_calls(bench):
    calls = []
    t = bench.time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3,
                               sync=lambda: calls.append("sync"), warmup=1)
    assert set(t) == {"a", "b"} and all(v >= 0 for v in t.values())
    assert calls.count("a") == calls.count("b") == 4
    assert calls[-3:] == ["sync", "b", "sync"]  # interleaved, synchronised on both sides


@pytest.mark.skipif(not simulated(), reason="with a GPU the benchmark would run for real")
def test_refuses_without_a_gpu(bench, capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(["--only", "nms"])
    assert e.value.code == bench.EXIT_NO_GPU == 2
    err = capsys.readouterr().err
    assert "Nothing was measured" in err and "pip install '.[gpu]'" in err
