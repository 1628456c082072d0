"""NMS kernels: every backend keeps exactly torchvision's indices, in its order.

Random sets of 0 to 20,000 boxes, with tied scores and with integer corners (many IoUs exactly at
0.5 or 1/3), at several thresholds. The CUDA kernel runs in Numba's simulator without a GPU, so it
gets small sets only.
"""
import numpy as np
import pytest
from minimaskrcnn.kernels.nms import cpu, cuda, reference

KERNELS = {"numpy": reference, "numba": cpu, "cuda": cuda}
# the simulator runs one Python thread per CUDA thread: keep its sets small
SIZES = {
    "numpy": (0, 1, 2, 64, 65, 1000, 20000),
    "numba": (0, 1, 2, 64, 65, 1000, 5000, 20000),
    "cuda": (0, 1, 2, 65, 200),
}
CASES = [
    pytest.param(backend, n, id=f"{backend}-{n}", marks=[pytest.mark.cuda] if backend == "cuda" else [])
    for backend in KERNELS
    for n in SIZES[backend]
]
BACKENDS = [pytest.param(b, marks=[pytest.mark.cuda] if b == "cuda" else []) for b in KERNELS]


def random_set(n, seed, kind):
    """Boxes and scores. kind: "uniform" (float corners, distinct scores), "tied" (integer corners on
    a small grid, scores in 8 levels: many equal scores and IoUs exactly 1/2, 1/3...),
    "clustered" (boxes jittered around a few centres, as detections are)."""
    rng = np.random.default_rng(seed)
    if kind == "tied":
        xy = rng.integers(0, 30, (n, 2))
        boxes = np.concatenate([xy, xy + rng.integers(1, 7, (n, 2))], axis=1).astype(np.float32)
        scores = rng.integers(0, 8, n).astype(np.float32) / 8
        return boxes, scores
    if kind == "clustered":
        centres = rng.uniform(0, 800, (max(n // 50, 1), 2))
        xy = centres[rng.integers(0, len(centres), n)] + rng.normal(0, 10, (n, 2))
    else:
        xy = rng.uniform(0, 1000, (n, 2))
    wh = rng.uniform(5, 100, (n, 2))
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2], axis=1).astype(np.float32)
    return boxes, rng.random(n).astype(np.float32)


def torchvision_nms(boxes, scores, threshold):
    torch = pytest.importorskip("torch")
    tv_ops = pytest.importorskip("torchvision.ops")
    return tv_ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), threshold).numpy()


@pytest.mark.reference
@pytest.mark.parametrize("backend,n", CASES)
@pytest.mark.parametrize("kind", ["uniform", "tied", "clustered"])
def test_nms_kernel_matches_torchvision(backend, n, kind):
    boxes, scores = random_set(n, seed=n, kind=kind)
    thresholds = (0.5,) if n > 5000 else (0.3, 1 / 3, 0.5, 0.7)
    for threshold in thresholds:
        expected = torchvision_nms(boxes, scores, threshold)
        keep = KERNELS[backend].nms(boxes, scores, threshold)
        assert keep.dtype == np.int64
        np.testing.assert_array_equal(keep, expected, err_msg=f"threshold {threshold}")
    if n >= 1000:
        assert 0 < len(keep) < n  # something was suppressed


@pytest.mark.reference
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # simulator threads: 0/0
def test_nms_kernel_float64_and_degenerate_boxes(backend):
    boxes, scores = random_set(120, seed=5, kind="tied")
    boxes = boxes.astype(np.float64)
    boxes[::10, 2:] = boxes[::10, :2]  # zero-area boxes: IoU 0/0 = NaN never suppresses
    boxes[5::10, 2] = boxes[5::10, 0] - 1  # inverted boxes
    scores = scores.astype(np.float64)
    for threshold in (0.0, 0.5):
        expected = torchvision_nms(boxes, scores, threshold)
        np.testing.assert_array_equal(KERNELS[backend].nms(boxes, scores, threshold), expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nms_kernels_agree_with_reference(backend):
    boxes, scores = random_set(150, seed=9, kind="clustered")
    np.testing.assert_array_equal(KERNELS[backend].nms(boxes, scores, 0.6), reference.nms(boxes, scores, 0.6))


@pytest.mark.cuda
def test_nms_cuda_bitmask_crosses_blocks():
    # 130 copies of one box, decreasing scores: the first suppresses all, across 3 blocks of 64
    boxes = np.tile(np.array([[0, 0, 4, 4]], np.float32), (130, 1))
    scores = np.linspace(1, 0, 130).astype(np.float32)
    np.testing.assert_array_equal(cuda.nms(boxes, scores, 0.5), [0])
    boxes[::2] += 100  # two groups, interleaved: one survivor each
    np.testing.assert_array_equal(cuda.nms(boxes, scores, 0.5), [0, 1])
