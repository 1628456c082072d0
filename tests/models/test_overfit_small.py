"""A small configuration overfits two images: its training losses fall steadily (issue 4, "Must show").

"r18-shapes" (ResNet-18 at width 0.25 with GroupNorm, 128-px inputs) from scratch, two synthetic
shapes images, 24 steps of SGD with momentum. Everything is seeded. About 20-30 s on 2 idle cores
(0.8-1 s a step; several times that on a busy machine).
"""
import numpy as np

from minimaskrcnn.data import ShapesDataset
from minimaskrcnn.models import LOSS_NAMES, build_model
from minimaskrcnn.nn import init
from minimaskrcnn.optim import SGD

STEPS = 24
WINDOW = 6


def test_r18_shapes_overfits_two_images():
    init.manual_seed(0)
    ds = ShapesDataset(2, image_size=128, seed=0)
    images, targets = map(list, zip(*[ds[i] for i in range(2)]))
    model = build_model("r18-shapes", seed=0).train()
    optimizer = SGD([p for p in model.parameters() if p.requires_grad], lr=0.005, momentum=0.9)

    history = []
    for _ in range(STEPS):
        losses = model(images, targets)
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append({k: v.item() for k, v in losses.items()} | {"total": total.item()})
        assert np.isfinite(history[-1]["total"])

    totals = np.array([h["total"] for h in history])
    windows = totals.reshape(-1, WINDOW).mean(axis=1)
    # steadily: every window of 6 steps is lower on average than the one before, and the last is
    # well under half the first
    assert np.all(np.diff(windows) < 0), windows
    assert windows[-1] < 0.5 * windows[0], windows
    # the objectness, classification and mask losses each fall
    for name in ("loss_objectness", "loss_classifier", "loss_mask"):
        first = np.mean([h[name] for h in history[:WINDOW]])
        last = np.mean([h[name] for h in history[-WINDOW:]])
        assert last < 0.7 * first, (name, first, last)
    assert set(history[0]) == set(LOSS_NAMES) | {"total"}
