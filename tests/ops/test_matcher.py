"""Matcher and BalancedPositiveNegativeSampler: hand cases, torchvision parity, sampling counts."""
import numpy as np
import pytest

from minimaskrcnn import Tensor
from minimaskrcnn.ops.matcher import BalancedPositiveNegativeSampler, Matcher

BELOW, BETWEEN = Matcher.BELOW_LOW_THRESHOLD, Matcher.BETWEEN_THRESHOLDS


def test_sentinels():
    assert (BELOW, BETWEEN) == (-1, -2)


def test_matcher_hand_case():
    iou = np.array([  # 2 gt x 5 predictions
        [0.9, 0.5, 0.1, 0.2, 0.35],
        [0.7, 0.6, 0.2, 0.0, 0.1],
    ], np.float32)
    matches = Matcher(0.7, 0.3)(iou)
    # 0.9 -> gt 0; 0.6 between; 0.2 below; 0.2 below; 0.35 between
    np.testing.assert_array_equal(matches, [0, BETWEEN, BELOW, BELOW, BETWEEN])
    assert matches.dtype == np.int64
    np.testing.assert_array_equal(Matcher(0.7, 0.7)(iou), [0, BELOW, BELOW, BELOW, BELOW])


def test_matcher_low_quality_matches_with_ties():
    iou = np.array([
        [0.4, 0.1, 0.4, 0.0],  # gt 0: best 0.4, at predictions 0 and 2 (a tie)
        [0.1, 0.3, 0.5, 0.0],  # gt 1: best 0.5, at prediction 2
    ], np.float32)
    np.testing.assert_array_equal(Matcher(0.7, 0.3)(iou), [BETWEEN, BETWEEN, BETWEEN, BELOW])
    # prediction 0 -> its best gt 0; prediction 2 -> its best gt 1 (not 0, although tied for gt 0)
    np.testing.assert_array_equal(Matcher(0.7, 0.3, allow_low_quality_matches=True)(iou), [0, BETWEEN, 1, BELOW])


def test_matcher_ties_pick_the_first_gt_and_reject_empty():
    np.testing.assert_array_equal(Matcher(0.5, 0.5)(np.array([[0.8], [0.8]])), [0])
    np.testing.assert_array_equal(Matcher(0.5, 0.5)(Tensor(np.array([[0.1], [0.8]]))), [1])
    with pytest.raises(ValueError, match="ground-truth"):
        Matcher(0.5, 0.5)(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="proposal"):
        Matcher(0.5, 0.5)(np.zeros((3, 0)))
    with pytest.raises(ValueError):
        Matcher(0.3, 0.7)


@pytest.mark.reference
@pytest.mark.parametrize("allow_low_quality_matches", [False, True])
@pytest.mark.parametrize("shape", [(1, 1), (1, 50), (4, 300), (20, 2000)])
def test_matcher_matches_torchvision(shape, allow_low_quality_matches):
    torch = pytest.importorskip("torch")
    det_utils = pytest.importorskip("torchvision.models.detection._utils")
    rng = np.random.default_rng(sum(shape))
    for quantized in (False, True):
        iou = rng.random(shape).astype(np.float32) * 0.8
        if quantized:  # many ties, exact threshold values, all-zero gt rows
            iou = np.round(iou * 10) / 10
            iou[0] = 0.0
        for high, low in ((0.7, 0.3), (0.5, 0.5)):
            expected = det_utils.Matcher(high, low, allow_low_quality_matches)(torch.from_numpy(iou)).numpy()
            np.testing.assert_array_equal(Matcher(high, low, allow_low_quality_matches)(iou), expected)


# ------------------------------------------------------------------------------------- sampler
def test_sampler_counts_and_masks():
    rng = np.random.default_rng(0)
    labels = rng.choice([-1, 0, 1, 2], size=1000, p=[0.2, 0.7, 0.05, 0.05])  # >= 1 positive
    sampler = BalancedPositiveNegativeSampler(256, 0.25, generator=0)
    pos, neg = sampler([labels, labels[:10], np.full(20, -1)])
    assert len(pos) == len(neg) == 3
    num_positive, num_negative = int((labels >= 1).sum()), int((labels == 0).sum())
    # image 0: enough negatives; positives capped at 64 = 256 * 0.25
    assert pos[0].dtype == np.uint8 and pos[0].shape == labels.shape
    assert pos[0].sum() == min(num_positive, 64) and neg[0].sum() == 256 - pos[0].sum()
    assert np.all(labels[pos[0] == 1] >= 1) and np.all(labels[neg[0] == 1] == 0)
    # image 1: fewer elements than the batch: all positives and negatives are taken
    np.testing.assert_array_equal(pos[1], labels[:10] >= 1)
    np.testing.assert_array_equal(neg[1], labels[:10] == 0)
    # image 2: only ignored elements
    assert pos[2].sum() == 0 and neg[2].sum() == 0
    assert num_negative > 256  # the case above really was capped


def test_sampler_fills_with_negatives_when_positives_are_few():
    labels = np.zeros(600, np.int64)
    labels[:10] = 1
    pos, neg = BalancedPositiveNegativeSampler(512, 0.25, generator=1)([labels])
    assert pos[0].sum() == 10 and neg[0].sum() == 502


def test_sampler_is_seedable_and_random():
    labels = np.array([1] * 100 + [0] * 900)
    draw = lambda seed: BalancedPositiveNegativeSampler(64, 0.5, generator=seed)([labels])  # noqa: E731
    (p1,), (n1,) = draw(3)
    (p2,), (n2,) = draw(3)
    (p3,), _ = draw(4)
    np.testing.assert_array_equal(p1, p2)
    np.testing.assert_array_equal(n1, n2)
    assert not np.array_equal(p1, p3)
    # every positive is equally likely: over many draws each is picked about 32/100 of the time
    sampler = BalancedPositiveNegativeSampler(64, 0.5, generator=5)
    counts = sum(sampler([labels])[0][0][:100].astype(np.int64) for _ in range(400))
    assert np.all(np.abs(counts / 400 - 0.32) < 0.12)
