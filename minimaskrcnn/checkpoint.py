"""A model from its training configuration, and a trained model back from its checkpoint.

``minimaskrcnn train`` writes ``<run>/checkpoint.npz`` (format: ``io.save_checkpoint``) whose
``extra`` holds the run's ``TrainConfig``, ``num_classes`` and ``class_names`` beside the optimizer,
schedule and random states. Training builds its model with ``build_model_from_config``; evaluation,
prediction and the command line rebuild a trained one with ``load_model``, without the training code.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from minimaskrcnn import io as mio
from minimaskrcnn.config import TrainConfig
from minimaskrcnn.errors import CheckpointError

__all__ = ["CHECKPOINT_NAME", "build_model_from_config", "checkpoint_file", "config_from_checkpoint_extra",
           "load_model", "load_training_config"]

CHECKPOINT_NAME = "checkpoint.npz"


def checkpoint_file(path: str | os.PathLike) -> str:
    """``path`` if it is a checkpoint file, ``<path>/checkpoint.npz`` if it is a run folder."""
    path = os.fspath(path)
    return os.path.join(path, CHECKPOINT_NAME) if os.path.isdir(path) else path


def build_model_from_config(config: TrainConfig, num_classes: int):
    """The model named in ``config`` with ``num_classes`` classes (background included).

    Its initial weights come from ``nn.init.manual_seed(config.seed)`` and its samplers are seeded
    from ``config.seed`` too, so the same configuration always builds the same model. Under the
    "cuda" backend with a GPU, its parameters are moved there (CuPy arrays; see docs/GPU.md).
    """
    from minimaskrcnn.backend import cupy_or_none, get_backend
    from minimaskrcnn.models import build_model
    from minimaskrcnn.nn import init

    init.manual_seed(int(config.seed))
    overrides: dict[str, Any] = dict(config.model_kwargs or {})
    overrides["seed"] = int(config.seed)
    if config.min_size is not None:
        overrides["min_size"] = int(config.min_size)
    if config.max_size is not None:
        overrides["max_size"] = int(config.max_size)
    model = build_model(config.model, num_classes=num_classes, **overrides)
    if get_backend() == "cuda" and cupy_or_none() is not None:
        model.to_device("cuda")  # before any optimizer holds the parameters
    return model


def config_from_checkpoint_extra(extra: Mapping[str, Any], path: str) -> TrainConfig:
    """The ``TrainConfig`` saved in a checkpoint's ``extra``.

    Raises:
        CheckpointError: it is missing or unreadable.
    """
    try:
        return TrainConfig.from_dict(extra["config"])
    except (TypeError, KeyError) as e:
        raise CheckpointError(path, f"its training configuration is unreadable: {e}") from None


def load_training_config(checkpoint: str | os.PathLike) -> TrainConfig:
    """The ``TrainConfig`` of the run that wrote ``checkpoint`` (a file or its run folder).

    Raises:
        CheckpointError: the file is missing, unreadable, or holds no configuration.
    """
    path = checkpoint_file(checkpoint)
    return config_from_checkpoint_extra(mio.load_checkpoint(path).extra or {}, path)


def load_model(checkpoint: str | os.PathLike, backend: str | None = None):
    """Rebuild a model trained by ``minimaskrcnn train`` from its checkpoint.

    Args:
        checkpoint: a checkpoint file (``runs/<name>/checkpoint.npz``) or the run folder holding it.
        backend: optionally switch to this backend first ("numpy", "numba", "cuda").

    Returns:
        (model, class_names): the model in eval mode, and the class names indexed by label
        (entry 0 is the background).

    Raises:
        CheckpointError: the file is missing, unreadable, or was not written by ``train``.
    """
    from minimaskrcnn.backend import set_backend

    if backend is not None:
        set_backend(backend)
    path = checkpoint_file(checkpoint)
    ckpt = mio.load_checkpoint(path)
    extra = ckpt.extra or {}
    if "config" not in extra or "num_classes" not in extra:
        raise CheckpointError(path, "not a training checkpoint of minimaskrcnn (no config / num_classes)")
    config = config_from_checkpoint_extra(extra, path)
    model = build_model_from_config(config, int(extra["num_classes"]))
    try:
        model.load_state_dict(ckpt.model_state)
    except (KeyError, ValueError, RuntimeError) as e:
        raise CheckpointError(path, f"weights do not fit model {config.model!r}: {e}") from None
    model.eval()
    class_names = list(extra.get("class_names") or [str(i) for i in range(int(extra["num_classes"]))])
    return model, class_names
