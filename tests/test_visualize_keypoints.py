"""Keypoints and skeletons drawn on images, alone and with detections."""
import numpy as np

from minimaskrcnn.data.figures import FIGURE_KEYPOINTS, FIGURE_SKELETON
from minimaskrcnn.visualize import LEFT_COLOR, RIGHT_COLOR, draw_detections, draw_keypoints, keypoint_colors


def _keypoints():
    kp = np.zeros((1, 3, 3), np.float32)
    kp[0] = [[10, 10, 2], [30, 10, 2], [30, 30, 0]]  # the third is not labelled
    return kp


def test_dots_and_limbs_are_drawn_where_the_keypoints_are():
    black = np.zeros((40, 40, 3), np.uint8)
    out = draw_keypoints(black, _keypoints(), skeleton=[[1, 2], [2, 3]], colors=[(255, 0, 0)] * 3,
                         limb_colors=(0, 255, 0), radius=2)
    assert out.shape == (40, 40, 3) and out.dtype == np.uint8 and not black.any()
    assert tuple(out[10, 10]) == (255, 0, 0) and tuple(out[10, 30]) == (255, 0, 0)
    assert tuple(out[10, 20]) == (0, 255, 0)  # the limb between the two labelled keypoints
    assert not out[20:, 25:].any()  # nothing towards the unlabelled one


def test_left_warm_right_cool():
    colors = keypoint_colors(FIGURE_KEYPOINTS, len(FIGURE_KEYPOINTS))
    assert colors[FIGURE_KEYPOINTS.index("left_wrist")] == LEFT_COLOR
    assert colors[FIGURE_KEYPOINTS.index("right_ankle")] == RIGHT_COLOR


def test_detections_with_keypoints_drawn_above_the_score_threshold():
    image = np.zeros((3, 40, 40), np.float32)
    det = {"boxes": np.array([[5, 5, 35, 35], [0, 0, 4, 4]], np.float32), "labels": np.array([1, 1]),
           "scores": np.array([0.9, 0.1], np.float32),
           "keypoints": np.concatenate([_keypoints(), _keypoints() + [1, 1, 0]]),
           "keypoints_scores": np.array([[3.0, -1.0, 3.0], [5, 5, 5]], np.float32)}
    out = draw_detections(image, det, skeleton=FIGURE_SKELETON, score_threshold=0.5, keypoint_score_threshold=0.0)
    boxes_only = draw_detections(image, {k: v for k, v in det.items() if "keypoints" not in k}, score_threshold=0.5)
    changed = np.any(out != boxes_only, axis=2)
    assert changed[8:13, 8:13].any()  # the confident keypoint of the kept detection
    assert not changed[8:13, 28:33].any()  # its keypoint below the keypoint score threshold
