"""Starting from trained weights: torchvision's Mask R-CNN and ImageNet ResNet files, and our checkpoints.

Fine-tuning as torchvision's tutorial and reference scripts do it: build the model for the new data,
copy in every weight of the file whose name and shape fit, and leave the rest (the class-specific
predictors when the classes differ) freshly initialised. Files are read without torch and without
running anything from them (``minimaskrcnn.io``).
"""
from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import numpy as np

from minimaskrcnn.errors import CheckpointError, PathLike

__all__ = [
    "COCO_V1_FROZEN_BN_EPS",
    "PREDICTOR_LAYERS",
    "TORCHVISION_MASKRCNN_URL",
    "TORCHVISION_RESNET50_URL",
    "LoadReport",
    "Weights",
    "backbone_state_dict",
    "load_matching_weights",
    "read_weights",
]

# torchvision's MaskRCNN_ResNet50_FPN_Weights.COCO_V1 (box AP 37.9, mask AP 34.6 on COCO val2017) and
# ResNet50_Weights.IMAGENET1K_V1, the backbone maskrcnn_resnet50_fpn starts from (weights_backbone)
TORCHVISION_MASKRCNN_URL = "https://download.pytorch.org/models/maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth"
TORCHVISION_RESNET50_URL = "https://download.pytorch.org/models/resnet50-0676ba61.pth"
# torchvision sets the frozen batch norms' eps to 0.0 after loading COCO_V1 (``overwrite_eps``): those
# weights were trained that way. ImageNet backbone weights keep FrozenBatchNorm2d's 1e-5.
COCO_V1_FROZEN_BN_EPS = 0.0
# the layers whose outputs are one per class: re-made when the data set's classes are not the file's
PREDICTOR_LAYERS = (
    "roi_heads.box_predictor.cls_score",
    "roi_heads.box_predictor.bbox_pred",
    "roi_heads.mask_predictor.mask_fcn_logits",
)
_CLS_SCORE = "roi_heads.box_predictor.cls_score.weight"
_BODY = "backbone.body."

KINDS = ("maskrcnn", "classification", "minimaskrcnn")


class Weights(NamedTuple):
    """A weights file as ``read_weights`` understood it."""

    kind: str  # "maskrcnn" (torchvision detection state_dict), "classification" (ResNet), "minimaskrcnn"
    state_dict: dict[str, np.ndarray]  # as in the file (a classification file keeps its keys: conv1.weight ...)
    num_classes: int | None  # L of the box predictor (None for a classification file)
    class_names: list[str] | None  # names by label: COCO's for a 91-class torchvision file, ours' as saved
    extra: dict  # our checkpoint's extra (config, step, ...); {} for torchvision files
    path: str


def _is_our_checkpoint(path: str) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return "__metadata__.npy" in zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False


def read_weights(path: PathLike) -> Weights:
    """Read a weights file and tell what it holds.

    Accepted (safely: nothing in the file is run, torch is not needed):

    - a torchvision detection state_dict (``torch.save(model.state_dict())``, the file torchvision
      downloads for ``weights="COCO_V1"``, or a reference-script checkpoint ``{"model": ..., "args": ...}``);
    - a torchvision ResNet classification state_dict (``conv1.weight`` ... ``fc.bias``), as
      downloaded for ``weights_backbone``;
    - a checkpoint written by ``minimaskrcnn train`` (``checkpoint.npz``) or a run folder holding one.

    Args:
        path: the file (or run folder).

    Returns:
        Weights(kind, state_dict, num_classes, class_names, extra, path).

    Raises:
        CheckpointError: missing, unreadable, or none of the kinds above (the message lists its first keys).
    """
    from minimaskrcnn import io as mio
    from minimaskrcnn.data.categories import coco_class_names

    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "checkpoint.npz")
    if not os.path.isfile(path):
        raise CheckpointError(path, "no such file")
    if _is_our_checkpoint(path):
        ckpt = mio.load_checkpoint(path)
        extra = dict(ckpt.extra or {})
        state = dict(ckpt.model_state)
        names = extra.get("class_names")
        num_classes = int(state[_CLS_SCORE].shape[0]) if _CLS_SCORE in state else extra.get("num_classes")
        return Weights("minimaskrcnn", state, num_classes, list(names) if names else None, extra, path)
    state = mio.load_torch_state_dict(path)
    if any(k.startswith(_BODY) for k in state):
        num_classes = int(state[_CLS_SCORE].shape[0]) if _CLS_SCORE in state else None
        names = coco_class_names() if num_classes == 91 else None
        return Weights("maskrcnn", state, num_classes, names, {}, path)
    if "conv1.weight" in state and any(k.startswith("layer1.") for k in state):
        return Weights("classification", state, None, None, {}, path)
    shown = ", ".join(list(state)[:5])
    raise CheckpointError(path, f"neither a torchvision Mask R-CNN state_dict (keys backbone.body.*) nor a ResNet "
                          f"classification one (keys conv1.*, layer1.*): its first keys are {shown}")


def backbone_state_dict(classification_state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A ResNet classification state_dict as Mask R-CNN's backbone body: ``backbone.body.<key>``.

    The classifier (``fc.*``) is dropped, as torchvision's ``IntermediateLayerGetter`` drops it;
    batch-norm buffers become the frozen batch norms' (``num_batches_tracked`` is dropped on loading).

    Args:
        classification_state: torchvision ``resnet50`` keys (``conv1.weight``, ``layer1.0.bn1.running_mean``,
            ..., ``fc.weight``), without any ``backbone.body.`` prefix.
    """
    return {_BODY + k: v for k, v in classification_state.items() if not k.startswith("fc.")}


class LoadReport(NamedTuple):
    """What ``load_matching_weights`` did, by state_dict key."""

    loaded: list[str]  # copied from the file
    remade: list[str]  # left at their fresh initialisation on purpose (``remake``)
    mismatched: list[str]  # in both, other shapes: kept fresh
    missing: list[str]  # in the model only: kept fresh
    unused: list[str]  # in the file only

    @property
    def remade_layers(self) -> list[str]:
        """The layers (keys without .weight / .bias) that were re-made, in model order."""
        return list(dict.fromkeys(k.rsplit(".", 1)[0] for k in self.remade))

    def summary(self) -> str:
        """One line for the log: counts, and the re-made layers by name."""
        text = f"loaded {len(self.loaded)} of {len(self.loaded) + len(self.remade) + len(self.mismatched)}"
        text += f" + {len(self.missing)} tensors" if self.missing else " tensors"
        if self.remade:
            text += f"; re-made: {', '.join(self.remade_layers)}"
        if self.mismatched:
            text += f"; other shapes, left fresh: {', '.join(self.mismatched[:4])}" + (
                " ..." if len(self.mismatched) > 4 else "")
        if self.missing:
            text += f"; not in the file, left fresh: {len(self.missing)} (e.g. {self.missing[0]})"
        return text


def _prefixed(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def load_matching_weights(model: Any, state_dict: Mapping[str, Any], *, remake: Iterable[str] = (),
                          path: PathLike | None = None) -> LoadReport:
    """Copy into ``model`` every tensor of ``state_dict`` whose name and shape match (in place).

    As torchvision's fine-tuning: parameters and buffers named in the file and of the same shape are
    loaded; layers under a ``remake`` prefix keep the model's fresh initialisation even when their
    shapes happen to match (a classifier for other classes); everything else the model has keeps its
    initialisation too and is reported. Which parameters train is not changed here (the model's
    ``trainable_layers`` decides).

    Args:
        model: a minimaskrcnn module (e.g. a MaskRCNN).
        state_dict: name -> array (e.g. ``read_weights(path).state_dict`` or ``backbone_state_dict(...)``).
        remake: key prefixes to leave fresh, e.g. ``PREDICTOR_LAYERS``.
        path: the file, for the error message.

    Returns:
        LoadReport(loaded, remade, mismatched, missing, unused).

    Raises:
        CheckpointError: the file is another architecture's: no tensor fits, or more of the tensors
            both name have other shapes than the same (nothing is loaded then).
    """
    remake = tuple(remake)
    own = model.state_dict()
    incoming = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    loaded, remade, mismatched, missing = [], [], [], []
    values = {}
    for key, value in own.items():
        if _prefixed(key, remake):
            remade.append(key)
        elif key not in incoming:
            missing.append(key)
        elif tuple(np.shape(incoming[key])) != tuple(value.shape):
            mismatched.append(key)
        else:
            loaded.append(key)
            values[key] = incoming[key]
    unused = [k for k in incoming if k not in own]
    if not loaded or len(mismatched) > len(loaded):
        example = f" (e.g. {mismatched[0]}: {tuple(np.shape(incoming[mismatched[0]]))} in the file, " \
                  f"{tuple(own[mismatched[0]].shape)} in the model)" if mismatched else ""
        raise CheckpointError(path, f"its tensors do not fit this model: {len(loaded)} of the {len(incoming)} fit, "
                              f"{len(mismatched)} have other shapes{example}; it was saved from another "
                              f"architecture (choose the model it was trained as)")
    model.load_state_dict(values, strict=False)
    return LoadReport(loaded, remade, mismatched, missing, unused)
