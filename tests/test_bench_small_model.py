"""benchmarks/bench_small_model.py builds the same model as ours from torchvision's MaskRCNN class.

The benchmark's ratio means something only if torchvision's model is the default run's architecture:
the same parameter names and shapes (our weights load into it), the same settings (anchors, sampling,
proposal counts, thresholds, image size), and with the same weights the same numbers from every part.
"""
import importlib.util
import os

import numpy as np
import pytest

from minimaskrcnn import Tensor
from minimaskrcnn.models import build_model

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

PATH = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "bench_small_model.py")
TOL = dict(rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def models():
    spec = importlib.util.spec_from_file_location("bench_small_model", PATH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    ours = build_model("r18-shapes")
    tv = bench.build_torch(ours.config, ours.config.num_classes)
    bench.load_our_weights(tv, ours)  # raises if a name or shape differs
    return ours, tv.eval()


def test_settings_match(models):
    ours, tv = models
    assert tv.transform.min_size == (ours.transform.min_size,) or tv.transform.min_size == ours.transform.min_size
    assert tv.transform.max_size == ours.transform.max_size
    assert tuple(tv.rpn.anchor_generator.sizes) == tuple(ours.rpn.anchor_generator.sizes)
    assert tuple(tv.rpn.anchor_generator.aspect_ratios) == tuple(ours.rpn.anchor_generator.aspect_ratios)
    for mine, theirs in ((ours.rpn, tv.rpn), (ours.roi_heads, tv.roi_heads)):
        assert theirs.fg_bg_sampler.batch_size_per_image == mine.fg_bg_sampler.batch_size_per_image
        assert theirs.fg_bg_sampler.positive_fraction == mine.fg_bg_sampler.positive_fraction
        assert theirs.proposal_matcher.high_threshold == mine.proposal_matcher.high_threshold
        assert theirs.proposal_matcher.low_threshold == mine.proposal_matcher.low_threshold
        assert theirs.nms_thresh == mine.nms_thresh
    assert tv.rpn._pre_nms_top_n == ours.rpn._pre_nms_top_n and tv.rpn._post_nms_top_n == ours.rpn._post_nms_top_n
    assert tv.roi_heads.detections_per_img == ours.roi_heads.detections_per_img
    assert tv.roi_heads.score_thresh == ours.roi_heads.score_thresh
    n_ours = sum(int(np.prod(p.shape)) for p in ours.parameters())
    assert n_ours == sum(p.numel() for p in tv.parameters())


def test_same_weights_same_numbers(models, rng):
    ours, tv = models
    x = rng.standard_normal((2, 3, 128, 128)).astype(np.float32)
    with torch.no_grad():
        theirs = tv.backbone(torch.from_numpy(x))
        mine = ours.backbone(Tensor(x))
        assert list(theirs) == list(mine)
        for name in mine:
            np.testing.assert_allclose(mine[name].numpy(), theirs[name].numpy(), **TOL)
        feats = [mine[name].numpy() for name in mine]
        logits, deltas = ours.rpn.head([Tensor(f) for f in feats])
        t_logits, t_deltas = tv.rpn.head([torch.from_numpy(f) for f in feats])
        for a, b in zip(logits + deltas, t_logits + t_deltas):
            np.testing.assert_allclose(a.numpy(), b.numpy(), **TOL)
        C = ours.backbone.out_channels
        pooled = rng.standard_normal((5, C, 7, 7)).astype(np.float32)
        scores, boxes = ours.roi_heads.box_predictor(ours.roi_heads.box_head(Tensor(pooled)))
        t_scores, t_boxes = tv.roi_heads.box_predictor(tv.roi_heads.box_head(torch.from_numpy(pooled)))
        np.testing.assert_allclose(scores.numpy(), t_scores.numpy(), **TOL)
        np.testing.assert_allclose(boxes.numpy(), t_boxes.numpy(), **TOL)
        pooled = rng.standard_normal((3, C, 14, 14)).astype(np.float32)
        masks = ours.roi_heads.mask_predictor(ours.roi_heads.mask_head(Tensor(pooled)))
        t_masks = tv.roi_heads.mask_predictor(tv.roi_heads.mask_head(torch.from_numpy(pooled)))
        assert masks.shape == tuple(t_masks.shape) == (3, ours.config.num_classes, 28, 28)
        np.testing.assert_allclose(masks.numpy(), t_masks.numpy(), **TOL)


def test_both_models_train_without_diverging_and_do_the_same_work(tmp_path):
    """A short run of the benchmark from the initial weights: torchvision's model follows our warm-up
    (at a constant 0.02 it diverged to NaN within a dozen steps, and a NaN model has no proposals, so
    its steps got cheap and the ratio meant nothing); both box heads get the same number of RoIs."""
    import subprocess
    import sys

    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, os.path.abspath(PATH), "--steps", "12", "--warmup", "2"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:4]]
            for line in proc.stdout.splitlines() if line.startswith("| ")}
    torch_rois, our_rois = (float(v) for v in rows["RoIs in the box head per step (median)"])
    assert torch_rois == our_rois > 0
    assert all(np.isfinite(float(v)) for v in rows["loss at the last step"])
    assert all(float(v) > 0 for v in rows["CPU time per step (ms)"])
