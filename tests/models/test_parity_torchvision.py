"""THE parity test: torchvision's maskrcnn_resnet50_fpn and ours, the same weights, two real COCO images.

torchvision's model with seeded random weights (box_score_thresh=0 so that detections exist) is
saved with torch.save, read back without torch by ``load_torch_state_dict`` and loaded into ours.
In float32 at the default size (min_size 800) both must give the same RPN proposals and the same
100 detections per image: labels equal, boxes within 0.01 px, scores within 1e-4, pasted mask
probabilities within 1e-3. Random weights give many near-equal scores, so two detections (or
proposals) whose scores differ by less than the tolerance may come in either order: detections are
paired by label, box and score, and a pair may sit at different ranks only when their scores are
that close. Takes about 30-80 s on 2 cores (both models, two images).
"""
import glob
import os

import numpy as np
import pytest

from minimaskrcnn import record_intermediates
from minimaskrcnn.io import load_torch_state_dict
from minimaskrcnn.models import maskrcnn_resnet50_fpn

BOX_TOL = 0.01  # pixels
SCORE_TOL = 1e-4
MASK_TOL = 1e-3
SAMPLE_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "minimaskrcnn", "data", "sample", "val2017")


def _images():
    from PIL import Image

    files = sorted(glob.glob(os.path.join(SAMPLE_DIR, "*.jpg")))[:2]
    assert len(files) == 2, "the COCO sample images are missing"
    # contiguous (C, H, W): a transposed view would put torch in its (slow) channels-last mode
    return [np.ascontiguousarray(np.asarray(Image.open(f).convert("RGB")).transpose(2, 0, 1)).astype(np.float32) / 255
            for f in files]


def _pair_detections(ref: dict, got: dict) -> list[tuple[int, int]]:
    """(i, j) pairs: torchvision's detection i is ours j (same label, boxes and scores within the
    tolerances). Raises AssertionError if a detection has no partner, or if a pair sits at different
    ranks although its scores are not near-equal to the scores it was swapped with."""
    rb, rs, rl = ref["boxes"], ref["scores"], ref["labels"]
    gb, gs, gl = got["boxes"], got["scores"], got["labels"]
    assert len(rb) == len(gb), f"{len(rb)} detections from torchvision, {len(gb)} from ours"
    used = np.zeros(len(gb), bool)
    pairs = []
    for i in range(len(rb)):
        close = ((~used) & (gl == rl[i]) & (np.abs(gb - rb[i]).max(axis=1) <= BOX_TOL)
                 & (np.abs(gs - rs[i]) <= SCORE_TOL))
        candidates = np.nonzero(close)[0]
        if len(candidates) == 0:
            # only the last ranks may differ, when their scores tie with the cut-off at detections_per_img
            assert rs[i] - rs[-1] <= SCORE_TOL, f"torchvision's detection {i} (score {rs[i]}) has no match"
            continue
        j = int(candidates[np.argmin(np.abs(candidates - i))])
        used[j] = True
        if i != j:  # a different rank: allowed only between near-equal scores
            assert abs(rs[i] - rs[j]) <= SCORE_TOL, f"detection {i} came at rank {j}"
        pairs.append((i, j))
    return pairs


def _match_sets(a: np.ndarray, b: np.ndarray, tol: float) -> int:
    """How many rows of a have a distinct row of b within tol (max abs difference)."""
    dist = np.abs(a[:, None, :] - b[None, :, :]).max(axis=2)
    matched, taken = 0, np.zeros(len(b), bool)
    for i in np.argsort(dist.min(axis=1)):
        j = np.nonzero((dist[i] <= tol) & ~taken)[0]
        if len(j):
            taken[j[np.argmin(dist[i, j])]] = True
            matched += 1
    return matched


@pytest.mark.reference
@pytest.mark.slow
def test_maskrcnn_resnet50_fpn_matches_torchvision(tmp_path):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")

    torch.manual_seed(0)
    tv = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, box_score_thresh=0.0)
    tv.eval()
    path = tmp_path / "maskrcnn_resnet50_fpn.pth"
    torch.save(tv.state_dict(), path)
    state_dict = load_torch_state_dict(path)  # no torch involved
    assert all(isinstance(v, np.ndarray) for v in state_dict.values())
    ours = maskrcnn_resnet50_fpn(weights=path, box_score_thresh=0.0)  # loads it the same way, strictly
    ours.eval()

    images = _images()
    captured = {}
    tv.rpn.register_forward_hook(lambda module, inputs, output: captured.update(proposals=output[0]) and None)
    with torch.no_grad():
        expected = tv([torch.from_numpy(img) for img in images])
    with record_intermediates() as intermediates:
        got = ours(images)

    # the RPN proposals: the same boxes (in any order among near-equal objectness)
    for e, g in zip(captured["proposals"], intermediates["proposals"]):
        e = e.numpy()
        assert g.shape == e.shape
        assert _match_sets(e, g, BOX_TOL) == len(e)

    # the detections
    for e, g, img in zip(expected, got, images):
        e = {k: v.numpy() for k, v in e.items()}
        assert len(e["boxes"]) == 100
        assert g["masks"].shape == (100, 1) + img.shape[1:]
        pairs = _pair_detections(e, g)
        assert len(pairs) >= 99
        i, j = np.array(pairs).T
        np.testing.assert_array_equal(g["labels"][j], e["labels"][i])
        np.testing.assert_allclose(g["boxes"][j], e["boxes"][i], rtol=0, atol=BOX_TOL)
        np.testing.assert_allclose(g["scores"][j], e["scores"][i], rtol=0, atol=SCORE_TOL)
        np.testing.assert_allclose(g["masks"][j], e["masks"][i], rtol=0, atol=MASK_TOL)
