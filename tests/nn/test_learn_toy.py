"""End to end: a small CNN built from these layers (conv-bn-relu-pool-linear), trained with SGD and the
warm-up schedule, learns to tell horizontal from vertical bars in a few seconds."""
import numpy as np

import minimaskrcnn.nn as nn
import minimaskrcnn.nn.functional as F
from minimaskrcnn import Tensor, no_grad
from minimaskrcnn.optim import SGD, WarmupMultiStepLR, clip_grad_norm_, param_groups_weight_decay

HORIZONTAL, VERTICAL = 0, 1


def bars(num: int, rng: np.random.Generator) -> tuple:
    """(num, 1, 16, 16) float32 images of one noisy bar each, and (num,) int64 labels (0 horizontal, 1 vertical)."""
    images = rng.normal(0, 0.3, (num, 1, 16, 16)).astype(np.float32)
    labels = rng.integers(0, 2, num)
    for i, label in enumerate(labels):
        length, thickness = rng.integers(5, 12), rng.integers(1, 3)
        along, across = rng.integers(0, 16 - length + 1), rng.integers(0, 16 - thickness + 1)
        if label == HORIZONTAL:
            images[i, 0, across : across + thickness, along : along + length] += 1.0
        else:
            images[i, 0, along : along + length, across : across + thickness] += 1.0
    return images, labels


def small_cnn() -> nn.Module:
    nn.init.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),  # 8x8
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 4x4
        nn.Flatten(), nn.Linear(8 * 4 * 4, 2),
    )


def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    model.eval()
    with no_grad():
        predicted = model(Tensor(images)).numpy().argmax(axis=1)
    model.train()
    return float((predicted == labels).mean())


def test_small_cnn_learns_bars():
    rng = np.random.default_rng(0)
    test_images, test_labels = bars(200, rng)
    model = small_cnn()
    optimizer = SGD(param_groups_weight_decay(model, 1e-4), lr=0.05, momentum=0.9)
    scheduler = WarmupMultiStepLR(optimizer, milestones=[45], gamma=0.1, warmup_factor=0.1, warmup_iters=10)
    accuracy_before = accuracy(model, test_images, test_labels)
    losses = []
    for _ in range(60):
        images, labels = bars(32, rng)
        loss = F.cross_entropy(model(Tensor(images)), labels)
        optimizer.zero_grad()
        loss.backward()
        clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    accuracy_after = accuracy(model, test_images, test_labels)
    assert np.mean(losses[:10]) > 0.6  # about log(2) at the start
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10]), (losses[:10], losses[-10:])
    assert accuracy_after > 0.9 and accuracy_after > accuracy_before + 0.2, (accuracy_before, accuracy_after)
