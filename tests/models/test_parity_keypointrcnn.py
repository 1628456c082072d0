"""Keypoint R-CNN against torchvision's keypointrcnn_resnet50_fpn: the same weights, real COCO person images.

torchvision's model with seeded random weights is saved with torch.save, read back without torch and
loaded strictly into ``minimaskrcnn.models.keypointrcnn_resnet50_fpn``. At the default size (min_size
800) both must give the same detections: labels equal, boxes within 0.01 px, scores within 1e-4, and
for every detection the same 17 keypoints within 1 px and their scores within 1e-3 (the keypoint head
is the model's most expensive part, so the test keeps 10 detections per image). box_score_thresh=0
gives detections despite the random weights. Takes about a minute on 2 cores.
"""
import numpy as np
import pytest

from minimaskrcnn.data import sample_dataset
from minimaskrcnn.models import keypointrcnn_resnet50_fpn

BOX_TOL = 0.01  # pixels
SCORE_TOL = 1e-4
KEYPOINT_TOL = 1.0  # pixels
KEYPOINT_SCORE_TOL = 1e-3
DETECTIONS = 10


def _person_images(count: int = 2) -> list[np.ndarray]:
    """The first sample images with at least two labelled persons, as (3, H, W) float32 in [0, 1]."""
    ds = sample_dataset("val", keypoints=True, min_keypoints_per_image=10)
    images = []
    for i in range(len(ds)):
        if (ds.load_target(i)["keypoints"][..., 2] > 0).any(axis=1).sum() >= 2:
            images.append(np.ascontiguousarray(ds.load_image(i)))
        if len(images) == count:
            return images
    raise AssertionError("the sample has too few images of persons with keypoints")


@pytest.mark.reference
@pytest.mark.slow
def test_keypointrcnn_resnet50_fpn_matches_torchvision(tmp_path):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")

    kwargs = dict(box_score_thresh=0.0, box_detections_per_img=DETECTIONS)
    torch.manual_seed(0)
    tv = torchvision.models.detection.keypointrcnn_resnet50_fpn(weights=None, weights_backbone=None, **kwargs)
    tv.eval()
    path = tmp_path / "keypointrcnn_resnet50_fpn.pth"
    torch.save(tv.state_dict(), path)
    ours = keypointrcnn_resnet50_fpn(weights=path, num_classes=2, num_keypoints=17, **kwargs)
    ours.eval()

    images = _person_images()
    with torch.no_grad():
        expected = tv([torch.from_numpy(img) for img in images])
    got = ours(images)
    for e, g in zip(expected, got):
        e = {k: v.numpy() for k, v in e.items()}
        assert set(g) == {"boxes", "labels", "scores", "keypoints", "keypoints_scores"}
        assert len(e["boxes"]) == len(g["boxes"]) == DETECTIONS
        assert g["keypoints"].shape == (DETECTIONS, 17, 3) and g["keypoints_scores"].shape == (DETECTIONS, 17)
        # random weights give near-equal scores: pair the detections by label, box and score first
        order = [int(np.argmin(np.abs(g["boxes"] - box).max(axis=1) + np.abs(g["scores"] - s) + (g["labels"] != lbl)))
                 for box, s, lbl in zip(e["boxes"], e["scores"], e["labels"])]
        assert sorted(order) == list(range(DETECTIONS))
        np.testing.assert_array_equal(g["labels"][order], e["labels"])
        np.testing.assert_allclose(g["boxes"][order], e["boxes"], rtol=0, atol=BOX_TOL)
        np.testing.assert_allclose(g["scores"][order], e["scores"], rtol=0, atol=SCORE_TOL)
        np.testing.assert_allclose(g["keypoints"][order], e["keypoints"], rtol=0, atol=KEYPOINT_TOL)
        np.testing.assert_allclose(g["keypoints_scores"][order], e["keypoints_scores"], rtol=0, atol=KEYPOINT_SCORE_TOL)
