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
    "generic_class_names",
    "is_minimaskrcnn_checkpoint",
    "load_matching_weights",
    "load_pretrained",
    "read_starting_weights",
    "read_weights",
    "resolve_config",
    "resolve_run",
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


def is_minimaskrcnn_checkpoint(path: PathLike) -> bool:
    """Whether ``path`` is a checkpoint written by ``minimaskrcnn train`` (an .npz with ``__metadata__``)."""
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
    if is_minimaskrcnn_checkpoint(path):
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


def generic_class_names(num_classes: int) -> list[str]:
    """Names for a model whose classes are unknown: "__background__", "class 1", "class 2", ..."""
    return ["__background__"] + [f"class {i}" for i in range(1, num_classes)]


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


# --------------------------------------------------------------------------------- training runs
def _model_hint(weights: Weights) -> str:
    """What to pass as --model for a weights file."""
    if weights.kind == "minimaskrcnn":
        model = (weights.extra.get("config") or {}).get("model")
        return f"it was trained as --model {model}" if model else "choose the model it was trained as"
    return "it is torchvision's maskrcnn_resnet50_fpn: --model maskrcnn_resnet50_fpn"


def read_starting_weights(config) -> tuple[Weights | None, Weights | None]:
    """Read a run's ``--weights`` and ``--backbone-weights`` files (before anything else, to fail early).

    Returns:
        (Weights of ``config.weights`` or None, Weights of ``config.backbone_weights`` or None).

    Raises:
        CheckpointError: a file is missing or unreadable, or of the wrong kind for its option.
    """
    weights = read_weights(config.weights) if config.weights else None
    backbone = read_weights(config.backbone_weights) if config.backbone_weights else None
    if weights is not None and weights.kind == "classification":
        raise CheckpointError(weights.path, "a ResNet classification state_dict (ImageNet weights of the backbone): "
                              "pass it as --backbone-weights")
    if backbone is not None and backbone.kind != "classification":
        raise CheckpointError(backbone.path, "--backbone-weights needs a ResNet classification state_dict (keys "
                              "conv1.*, layer1.*, fc.*); this is a whole detection model: pass it as --weights")
    return weights, backbone


def resolve_config(config, weights: Weights | None, categories: Mapping[int, str] | None,
                   class_names: list[str] | None = None):
    """A fresh run's configuration with what its starting weights decide.

    torchvision's fine-tuning rules, written into the configuration so that the run's checkpoint
    rebuilds the same model and labels without the weights files:

    - ``trainable_backbone_layers``: 3 unless given (torchvision's default with pretrained weights);
    - ``norm_eps``: 0.0 with a torchvision Mask R-CNN file (torchvision's COCO_V1 convention), the
      run's own with one of our checkpoints, unless given;
    - the labels: if the data set's categories are classes of the ``--weights`` file (same ids and
      names, e.g. a COCO subset with COCO's file) and ``remake_predictors`` is off, ``class_names``
      becomes the file's (the predictors are then kept); otherwise ``contiguous_labels`` is set
      (the predictors are re-made for K + 1 classes).

    Args:
        config: the run's ``TrainConfig`` with ``weights`` and/or ``backbone_weights``.
        weights: its ``--weights`` file as ``read_starting_weights`` read it (or None).
        categories: the training set's category id -> name (None for data without categories, such
            as an in-memory data set: then ``class_names`` are compared instead).
        class_names: the training set's class names by label (used when ``categories`` is None).

    Returns:
        The resolved ``TrainConfig`` (a copy).

    Raises:
        AnnotationError: a non-integer category id.
    """
    import dataclasses

    from minimaskrcnn.data.categories import label_map_for_classes

    changes: dict[str, Any] = {}
    if config.trainable_backbone_layers is None:
        changes["trainable_backbone_layers"] = 3
    if config.norm_eps is None and weights is not None:
        if weights.kind == "maskrcnn":
            changes["norm_eps"] = COCO_V1_FROZEN_BN_EPS
        elif (weights.extra.get("config") or {}).get("norm_eps") is not None:
            changes["norm_eps"] = float(weights.extra["config"]["norm_eps"])
    if weights is not None and config.class_names is None:
        fit = None
        if not config.remake_predictors and weights.class_names:
            if categories is not None:
                fit = label_map_for_classes(categories, weights.class_names, path=config.train_annotations)
            elif class_names is not None and list(class_names) == list(weights.class_names):
                fit = class_names
        if fit is None:
            changes["contiguous_labels"] = True
        elif categories is not None:
            changes["class_names"] = tuple(fit.class_names[1:])
            changes["contiguous_labels"] = fit.contiguous
    return dataclasses.replace(config, **changes)


def resolve_run(config, weights: Weights | None, train_dataset, val_dataset,
                class_names: list[str]) -> tuple[Any, list[str]]:
    """``resolve_config`` for a fresh run's data sets, which are relabelled as the result says.

    COCO data sets (``CocoDataset``, both) give their categories and are relabelled in place
    (``data.prepare.relabel_datasets``: the file's classes, or contiguous labels); other data sets
    are compared by ``class_names`` and keep their labels.

    Args:
        config: the run's ``TrainConfig`` with ``weights`` and/or ``backbone_weights``.
        weights: its ``--weights`` file as ``read_starting_weights`` read it (or None).
        train_dataset, val_dataset: the run's data sets (``data.prepare.DetectionDataset``).
        class_names: the training set's class names by label, as prepared.

    Returns:
        (the resolved ``TrainConfig`` (a copy), the class names by label after relabelling).

    Raises:
        AnnotationError: a non-integer category id, or a category that is not one of the model's classes.
    """
    from minimaskrcnn.data.coco import CocoDataset
    from minimaskrcnn.data.prepare import relabel_datasets

    coco = isinstance(train_dataset, CocoDataset) and isinstance(val_dataset, CocoDataset)
    config = resolve_config(config, weights, train_dataset.categories if coco else None, class_names)
    if coco:
        relabel_datasets(config, train_dataset, val_dataset)
        class_names = list(train_dataset.class_names)
    return config, class_names


def load_pretrained(model: Any, class_names: list[str], weights: Weights | None, backbone: Weights | None,
                    remake_predictors: bool = False) -> list[tuple[str, LoadReport]]:
    """Load a run's starting weights into its freshly built model.

    The backbone file first (its body), then the ``--weights`` file (every tensor that fits, so it
    wins where both have one). The class-specific layers (``PREDICTOR_LAYERS``) are taken from
    ``weights`` only when the model's classes are the file's (``class_names`` equal to its names)
    and ``remake_predictors`` is off; otherwise they keep their fresh initialisation.

    Returns:
        [(file path, LoadReport), ...] in loading order.

    Raises:
        CheckpointError: a file was saved from another architecture (the message names the --model
            to use).
    """
    reports = []
    if backbone is not None:
        reports.append((backbone.path, load_matching_weights(model, backbone_state_dict(backbone.state_dict),
                                                             path=backbone.path)))
    if weights is not None:
        keep = (not remake_predictors and weights.class_names is not None
                and list(weights.class_names) == list(class_names))
        try:
            report = load_matching_weights(model, weights.state_dict, remake=() if keep else PREDICTOR_LAYERS,
                                           path=weights.path)
        except CheckpointError as e:
            raise CheckpointError(weights.path, f"{e.problem}: {_model_hint(weights)}") from None
        reports.append((weights.path, report))
    return reports
