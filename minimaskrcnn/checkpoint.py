"""A model from its training configuration, and a trained model back from its checkpoint.

``minimaskrcnn train`` writes ``<run>/checkpoint.npz`` (format: ``io.save_checkpoint``) whose
``extra`` holds the run's ``TrainConfig``, ``num_classes`` and ``class_names`` beside the optimizer,
schedule and random states. Training builds its model with ``build_model_from_config``; evaluation,
prediction and the command line rebuild a trained one with ``load_model``, without the training code.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from minimaskrcnn import io as mio
from minimaskrcnn.config import TrainConfig
from minimaskrcnn.errors import CheckpointError

__all__ = ["CHECKPOINT_NAME", "TRAINING_STATE_KEYS", "build_model_from_config", "checkpoint_file",
           "config_from_checkpoint_extra", "load_keypoint_info", "load_model", "load_training_config",
           "load_training_state"]

CHECKPOINT_NAME = "checkpoint.npz"
# what a training checkpoint's ``extra`` must hold for a run to resume from it (``Trainer.state_extra``)
TRAINING_STATE_KEYS = ("step", "scheduler", "loader", "generators")


def checkpoint_file(path: str | os.PathLike) -> str:
    """``path`` if it is a checkpoint file, ``<path>/checkpoint.npz`` if it is a run folder."""
    path = os.fspath(path)
    return os.path.join(path, CHECKPOINT_NAME) if os.path.isdir(path) else path


def build_model_from_config(config: TrainConfig, num_classes: int):
    """The model named in ``config`` with ``num_classes`` classes (background included).

    Its initial weights come from ``nn.init.manual_seed(config.seed)`` and its samplers are seeded
    from ``config.seed`` too, so the same configuration always builds the same model. Under the
    "cuda" backend with a GPU, its parameters are moved there (CuPy arrays; see docs/GPU.md).
    ``trainable_backbone_layers`` and ``norm_eps`` change the backbone; starting weights
    (``config.weights``) are loaded by the trainer (``pretrained.load_pretrained``), not here.
    """
    from minimaskrcnn.backend import cupy_or_none, get_backend
    from minimaskrcnn.models import build_model

    model = build_model(model_config(config, num_classes))
    if get_backend() == "cuda" and cupy_or_none() is not None:
        model.to_device("cuda")  # before any optimizer holds the parameters
    return model


def model_config(config: TrainConfig, num_classes: int):
    """The ``MaskRCNNConfig`` a ``TrainConfig`` names, with its overrides (and seeds ``nn.init``)."""
    from minimaskrcnn.models.configs import get_config
    from minimaskrcnn.nn import init

    init.manual_seed(int(config.seed))
    overrides: dict[str, Any] = dict(config.model_kwargs or {})
    overrides["seed"] = int(config.seed)
    if config.min_size is not None:
        overrides["min_size"] = int(config.min_size)
    if config.max_size is not None:
        overrides["max_size"] = int(config.max_size)
    if config.trainable_backbone_layers is not None:
        overrides["trainable_backbone_layers"] = int(config.trainable_backbone_layers)
    base = get_config(config.model)
    if config.norm_eps is not None:
        overrides["backbone"] = dataclasses.replace(base.backbone, norm_eps=float(config.norm_eps))
    return get_config(base, num_classes=num_classes, **overrides)


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


def load_training_state(ckpt: mio.Checkpoint, path: str, model, optimizer, num_classes: int) -> dict[str, Any]:
    """Load a training checkpoint's weights and optimizer state into a run's model and optimizer.

    Args:
        ckpt: the checkpoint as ``io.load_checkpoint`` read it.
        path: its file, for the messages.
        model, optimizer: the run's, built as the checkpoint's run built them.
        num_classes: the run's number of classes L (background included).

    Returns:
        the checkpoint's ``extra`` (step, schedule, data order, generator states...), for the trainer
        to restore the rest.

    Raises:
        CheckpointError: not a training checkpoint (no step, schedule, loader or generator states), saved
            for another number of classes, or its tensors do not fit the model and optimizer.
    """
    extra = ckpt.extra or {}
    for key in TRAINING_STATE_KEYS:
        if key not in extra:
            raise CheckpointError(path, f"not a training checkpoint (no {key!r})")
    if int(extra.get("num_classes", num_classes)) != num_classes:
        raise CheckpointError(path, f"has {extra['num_classes']} classes, the data set {num_classes}")
    try:
        model.load_state_dict(ckpt.model_state)
        optimizer.load_state_dict(ckpt.optimizer_state)
    except (KeyError, ValueError, RuntimeError) as e:
        raise CheckpointError(path, f"does not fit this model and optimizer: {e}") from None
    return extra


def load_model(checkpoint: str | os.PathLike, backend: str | None = None, *, min_size: int | None = None,
               max_size: int | None = None, norm_eps: float | None = None,
               model_kwargs: Mapping[str, Any] | None = None):
    """Rebuild a trained model: one of ours from its checkpoint, or torchvision's from its weights file.

    Args:
        checkpoint: a checkpoint written by ``minimaskrcnn train`` (``runs/<name>/checkpoint.npz``) or
            its run folder; or a torchvision Mask R-CNN state_dict (``maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth``,
            or a file holding one as torchvision's reference scripts save it, ``{"model": ...}``),
            read without torch (``minimaskrcnn.io``). Such a file becomes torchvision's
            ``maskrcnn_resnet50_fpn`` (v1) with the file's number of classes; 91 classes are COCO's
            (labels = COCO category ids, COCO's names).
        backend: optionally switch to this backend first ("numpy", "numba", "cuda").
        min_size, max_size: resize the inputs to these instead of the run's (or torchvision's 800 /
            1333): smaller is faster and coarser.
        norm_eps: eps of the backbone's normalisation layers; default: the run's, and 0.0 for a
            torchvision file (as torchvision sets it for its COCO_V1 weights; 1e-5 suits a model
            torchvision trained from ImageNet backbone weights only).
        model_kwargs: more torchvision-style model arguments, e.g. ``{"box_score_thresh": 0.3}``.

    Returns:
        (model, class_names): the model in eval mode, and the class names indexed by label
        (entry 0 is the background).

    Raises:
        CheckpointError: the file is missing, unreadable, not a checkpoint of ``train`` nor a
            torchvision Mask R-CNN state_dict, or its weights do not fit the model.
    """
    from minimaskrcnn.backend import set_backend
    from minimaskrcnn.pretrained import is_minimaskrcnn_checkpoint

    if backend is not None:
        set_backend(backend)
    path = checkpoint_file(checkpoint)
    changes: dict[str, Any] = {}
    if min_size is not None:
        changes["min_size"] = int(min_size)
    if max_size is not None:
        changes["max_size"] = int(max_size)
    if norm_eps is not None:
        changes["norm_eps"] = float(norm_eps)
    if os.path.isfile(path) and not is_minimaskrcnn_checkpoint(path):
        return _load_torchvision_model(path, changes, model_kwargs)
    ckpt = mio.load_checkpoint(path)
    extra = ckpt.extra or {}
    if "config" not in extra or "num_classes" not in extra:
        raise CheckpointError(path, "not a training checkpoint of minimaskrcnn (no config / num_classes)")
    config = config_from_checkpoint_extra(extra, path)
    if model_kwargs:
        changes["model_kwargs"] = {**(config.model_kwargs or {}), **dict(model_kwargs)}
    config = dataclasses.replace(config, **changes)
    model = build_model_from_config(config, int(extra["num_classes"]))
    try:
        model.load_state_dict(ckpt.model_state)
    except (KeyError, ValueError, RuntimeError) as e:
        raise CheckpointError(path, f"weights do not fit model {config.model!r}: {e}") from None
    model.eval()
    class_names = list(extra.get("class_names") or [str(i) for i in range(int(extra["num_classes"]))])
    return model, class_names


def _load_torchvision_model(path: str, changes: dict[str, Any], model_kwargs: Mapping[str, Any] | None):
    """``load_model`` for a torchvision Mask R-CNN state_dict file."""
    from minimaskrcnn.pretrained import COCO_V1_FROZEN_BN_EPS, generic_class_names, read_weights

    weights = read_weights(path)
    if weights.kind == "classification":
        raise CheckpointError(path, "a ResNet classification state_dict (ImageNet weights of a backbone), not a "
                              "detection model: start a training run from it with --backbone-weights")
    if weights.num_classes is None or "roi_heads.mask_predictor.mask_fcn_logits.weight" not in weights.state_dict:
        raise CheckpointError(path, "not a Mask R-CNN state_dict (it has no box or mask predictor; a Faster R-CNN "
                              "file? start a training run from it with --weights instead)")
    config = TrainConfig(model="maskrcnn_resnet50_fpn", model_kwargs=dict(model_kwargs or {}) or None,
                         norm_eps=COCO_V1_FROZEN_BN_EPS)
    config = dataclasses.replace(config, **changes)
    model = build_model_from_config(config, weights.num_classes)
    try:
        model.load_state_dict(weights.state_dict)
    except RuntimeError as e:
        hint = (" (its keys are those of maskrcnn_resnet50_fpn_v2, which minimaskrcnn does not build; use the v1 "
                "weights, maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth)"
                if any(k.startswith("roi_heads.box_head.0.") for k in weights.state_dict) else "")
        lines = str(e).splitlines()
        first = (lines[1] if len(lines) > 1 else lines[0]).strip()
        raise CheckpointError(path, f"not torchvision's maskrcnn_resnet50_fpn state_dict{hint}: "
                              f"{first[:300]}{' ...' if len(first) > 300 else ''}") from None
    model.eval()
    return model, weights.class_names or generic_class_names(weights.num_classes)


def load_keypoint_info(checkpoint: str | os.PathLike) -> tuple[list[str] | None, list[list[int]] | None]:
    """The keypoint names and skeleton of the data a keypoint model was trained on (for pictures).

    Args:
        checkpoint: a checkpoint file or the run folder holding it.

    Returns:
        (keypoint_names, skeleton): the names of the NK keypoints and the limbs as 1-based pairs
        (COCO's ``skeleton``); (None, None) for a run whose data had no keypoints.

    Raises:
        CheckpointError: the file is missing or unreadable.
    """
    extra = mio.load_checkpoint(checkpoint_file(checkpoint)).extra or {}
    return extra.get("keypoint_names"), extra.get("skeleton")
