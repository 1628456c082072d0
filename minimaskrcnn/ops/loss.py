"""Losses of Mask R-CNN's heads, each a fused op (its own backward) that is stable for any logit.

- ``cross_entropy``: the box head's classification of each RoI into L classes (softmax + NLL),
- ``smooth_l1_loss``: box regression (RPN and box head, Fast R-CNN's robust L1),
- ``binary_cross_entropy_with_logits``: objectness and the per-pixel sigmoid mask loss,
plus ``log_softmax``/``softmax`` (the box head's class scores at inference). The losses lesson
derives each backward.
"""
from __future__ import annotations

from minimaskrcnn.backend import get_array_module, unwrap
from minimaskrcnn.function import Function, unbroadcast
from minimaskrcnn.ops._utils import log_softmax_array, sigmoid_array, softmax_array
from minimaskrcnn.tensor import Tensor

_REDUCTIONS = ("none", "mean", "sum")


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _reduce(loss, reduction: str):
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean()
    return loss


def _reduce_backward(dout, shape, reduction: str):
    """The gradient of the reduction: d loss_element = dout (none), dout (sum) or dout / count (mean)."""
    xp = get_array_module(dout)
    if reduction == "none":
        return dout
    count = 1
    for n in shape:
        count *= n
    g = dout / count if reduction == "mean" else dout
    return xp.broadcast_to(g, shape)


# ------------------------------------------------------------------------------ softmax family
class LogSoftmax(Function):
    """log(softmax(x)) along an axis (fused: stable, and its backward needs only the output)."""

    @staticmethod
    def forward(ctx, x, dim=-1):
        out = log_softmax_array(x, dim)
        ctx.save_for_backward(out)
        ctx.dim = dim
        return out

    @staticmethod
    def backward(ctx, dout):
        (out,) = ctx.saved_tensors
        xp = get_array_module(out)
        return dout - xp.exp(out) * dout.sum(axis=ctx.dim, keepdims=True)


class Softmax(Function):
    """exp(x) / sum(exp(x)) along an axis (fused)."""

    @staticmethod
    def forward(ctx, x, dim=-1):
        out = softmax_array(x, dim)
        ctx.save_for_backward(out)
        ctx.dim = dim
        return out

    @staticmethod
    def backward(ctx, dout):
        (out,) = ctx.saved_tensors
        return out * (dout - (dout * out).sum(axis=ctx.dim, keepdims=True))


def log_softmax(input: Tensor, dim: int = -1) -> Tensor:
    """``log(softmax(input))`` along ``dim`` (``torch.nn.functional.log_softmax``), stable for any input.

    Args:
        input: float Tensor of any shape; dim: the class axis.

    Returns:
        a Tensor of input's shape and dtype.
    """
    return LogSoftmax.apply(input, dim=dim)


def softmax(input: Tensor, dim: int = -1) -> Tensor:
    """``exp(input) / sum(exp(input))`` along ``dim`` (``torch.nn.functional.softmax``).

    Args:
        input: float Tensor of any shape; dim: the class axis.

    Returns:
        a Tensor of input's shape and dtype, each slice along ``dim`` summing to 1.
    """
    return Softmax.apply(input, dim=dim)


# ------------------------------------------------------------------------------- cross-entropy
class CrossEntropy(Function):
    """Softmax cross-entropy over (K, L) logits (fused: d loss / d logits = softmax - one_hot)."""

    @staticmethod
    def forward(ctx, logits, target, weight=None, ignore_index=-100, reduction="mean"):
        xp = get_array_module(logits)
        K, L = logits.shape
        if target.dtype.kind not in "iu":
            raise TypeError(f"cross_entropy: target must hold integer class indices, got {target.dtype}")
        if target.shape != (K,):
            raise ValueError(f"cross_entropy: target has shape {target.shape}, "
                             f"expected ({K},) for logits {logits.shape}")
        valid = target != ignore_index
        safe_target = xp.where(valid, target, 0)  # ignored rows point at class 0, then weigh 0
        # the range check would be a sync on the GPU: there, as in PyTorch, it is left out
        if xp.__name__ == "numpy" and bool(((safe_target < 0) | (safe_target >= L)).any()):
            raise IndexError(f"cross_entropy: target values must be in [0, {L}) or ignore_index={ignore_index}")
        rows = xp.arange(K)
        log_prob = log_softmax_array(logits, 1)
        row_weight = valid.astype(logits.dtype)  # (K,): 0 for ignored rows
        if weight is not None:
            row_weight = row_weight * weight[safe_target]
        loss = -log_prob[rows, safe_target] * row_weight  # (K,)
        if reduction == "mean":
            # PyTorch's weighted mean: divide by the total weight of the counted rows
            # (0/0 = NaN when every row is ignored, as PyTorch)
            total = row_weight.sum()
            out = loss.sum() / total
        else:
            total = None
            out = loss.sum() if reduction == "sum" else loss
        ctx.save_for_backward(log_prob, safe_target, row_weight)
        ctx.reduction, ctx.total = reduction, total
        return out

    @staticmethod
    def backward(ctx, dout):
        log_prob, safe_target, row_weight = ctx.saved_tensors
        xp = get_array_module(log_prob)
        g = dout * row_weight  # (K,): each row's d out / d loss_row, times its weight
        if ctx.reduction == "mean":
            g = g / ctx.total
        dlogits = xp.exp(log_prob)  # softmax
        dlogits[xp.arange(len(safe_target)), safe_target] -= 1  # softmax - one_hot(target)
        return dlogits * g[:, None], None, None


def cross_entropy(input: Tensor, target, weight=None, ignore_index: int = -100, reduction: str = "mean") -> Tensor:
    """Softmax cross-entropy between logits and class indices, as ``torch.nn.functional.cross_entropy``.

    Args:
        input: (K, L) float Tensor of logits (K rows, e.g. sampled RoIs; L classes with background),
            or (K, L, d1, ...) with one class axis (moved last and flattened here).
        target: (K,) (or (K, d1, ...)) int Tensor or array of class indices in [0, L).
        weight: optional (L,) float per-class weight.
        ignore_index: rows whose target equals it add nothing (loss 0, no gradient, no weight).
        reduction: "none" -> per-row losses (K,); "sum"; "mean" -> sum / (sum of the weights of the
            counted rows), PyTorch's weighted mean (NaN if every row is ignored).

    Returns:
        a 0-d Tensor (mean, sum) or a (K,) Tensor (none). Gradient to input only:
        ``(softmax(input) - one_hot(target)) * row weight`` (fused, never forms log(0)).
    """
    _check_reduction(reduction)
    if input.ndim > 2:
        # (K, L, d1, ...) -> (K*d1*..., L): PyTorch's "K-dimensional" case
        moved = input.permute(0, *range(2, input.ndim), 1)
        spatial = moved.shape[:-1]
        flat_target = unwrap(target).reshape(-1)
        loss = CrossEntropy.apply(moved.reshape(-1, input.shape[1]), flat_target, weight,
                                  ignore_index=ignore_index, reduction=reduction)
        return loss.reshape(spatial) if reduction == "none" else loss
    if input.ndim != 2:
        raise ValueError(f"cross_entropy expects (K, L) logits, got shape {input.shape}")
    return CrossEntropy.apply(input, target, weight, ignore_index=ignore_index, reduction=reduction)


# ------------------------------------------------------------------------------- smooth L1
class SmoothL1(Function):
    """Huber-style smooth L1 (fused): quadratic below ``beta``, linear above."""

    @staticmethod
    def forward(ctx, input, target, reduction="mean", beta=1.0):
        xp = get_array_module(input)
        diff = input - target
        abs_diff = abs(diff)
        if beta == 0:
            loss = abs_diff  # PyTorch: beta = 0 is plain L1
        else:
            loss = xp.where(abs_diff < beta, 0.5 * diff * diff / beta, abs_diff - 0.5 * beta)
        ctx.save_for_backward(diff)
        ctx.input_shape, ctx.target_shape = input.shape, target.shape
        ctx.reduction, ctx.beta = reduction, beta
        return _reduce(loss, reduction)

    @staticmethod
    def backward(ctx, dout):
        (diff,) = ctx.saved_tensors
        xp = get_array_module(diff)
        beta = ctx.beta
        if beta == 0:
            ddiff = xp.sign(diff)
        else:
            ddiff = xp.clip(diff / beta, -1, 1)  # diff/beta inside the quadratic zone, +-1 outside
        ddiff = ddiff * _reduce_backward(dout, diff.shape, ctx.reduction)
        return unbroadcast(ddiff, ctx.input_shape), unbroadcast(-ddiff, ctx.target_shape)


def smooth_l1_loss(input: Tensor, target, reduction: str = "mean", beta: float = 1.0) -> Tensor:
    """Smooth L1 loss, as ``torch.nn.functional.smooth_l1_loss`` (Fast R-CNN's box regression loss).

    Args:
        input: float Tensor, e.g. (K, 4) predicted box deltas (dx, dy, dw, dh).
        target: float Tensor or array broadcastable to input, e.g. the (K, 4) regression targets.
        reduction: "none" (elementwise), "mean" or "sum". torchvision's heads use
            ``reduction="sum"`` and divide by the number of sampled anchors/RoIs themselves.
        beta: where the loss turns from quadratic to linear (torchvision's RPN and box head: 1/9).

    Returns:
        ``0.5 * d**2 / beta`` where ``|d| < beta`` else ``|d| - 0.5 * beta``, with d = input - target,
        reduced. Gradients to input (``clip(d / beta, -1, 1)``) and target (the negative).
    """
    _check_reduction(reduction)
    if beta < 0:
        raise ValueError(f"smooth_l1_loss: beta must be >= 0, got {beta}")
    return SmoothL1.apply(input, target, reduction=reduction, beta=beta)


# ------------------------------------------------------------------------------- sigmoid BCE
class BinaryCrossEntropyWithLogits(Function):
    """Sigmoid + binary cross-entropy in one op: stable for any logit, d loss / dx = sigmoid(x) - t."""

    @staticmethod
    def forward(ctx, x, target, weight=None, pos_weight=None, reduction="mean"):
        xp = get_array_module(x)
        # -log(sigmoid(x)) = softplus(-x) = max(-x, 0) + log1p(exp(-|x|)): exp never overflows
        softplus_neg = xp.maximum(-x, 0) + xp.log1p(xp.exp(-abs(x)))
        if pos_weight is None:
            loss = (1 - target) * x + softplus_neg  # = max(x, 0) - x*t + log1p(exp(-|x|))
        else:
            # positives weighted by pos_weight: t*pw*(-log s) + (1-t)*(-log(1-s))
            loss = (1 - target) * x + (1 + (pos_weight - 1) * target) * softplus_neg
        if weight is not None:
            loss = loss * weight
        ctx.save_for_backward(x, target, weight, pos_weight, softplus_neg)
        ctx.reduction = reduction
        return _reduce(loss, reduction)

    @staticmethod
    def backward(ctx, dout):
        x, target, weight, pos_weight, softplus_neg = ctx.saved_tensors
        sig_pos, sig_neg = sigmoid_array(x), sigmoid_array(-x)  # sigmoid(-x) = 1 - sigmoid(x), without cancellation
        # dx = sigmoid(x) - t, written as (1 - t) sigmoid(x) - t sigmoid(-x) so that it keeps its
        # precision when sigmoid(x) is within rounding of t (confident logits)
        if pos_weight is None:
            dx = (1 - target) * sig_pos - target * sig_neg
            dt = -x
        else:
            dx = (1 - target) * sig_pos - pos_weight * target * sig_neg
            dt = -x + (pos_weight - 1) * softplus_neg
        g = _reduce_backward(dout, x.shape, ctx.reduction)
        if weight is not None:
            g = g * weight
        return dx * g, dt * g, None, None


def binary_cross_entropy_with_logits(input: Tensor, target, weight=None, reduction: str = "mean",
                                     pos_weight=None) -> Tensor:
    """Sigmoid binary cross-entropy on logits, as ``torch.nn.functional.binary_cross_entropy_with_logits``.

    This is Mask R-CNN's per-pixel sigmoid mask loss (Sec. 3: an S x S binary mask per RoI, only the
    ground-truth class's mask counts) and the RPN's objectness loss. It is fused for stability:
    ``loss = max(x, 0) - x*t + log1p(exp(-|x|))`` never overflows and never takes log(0), whatever
    the logit, and its gradient is simply ``sigmoid(x) - t`` (computed without cancellation).

    Args:
        input: float Tensor of logits, any shape (e.g. (K, S, S) mask logits).
        target: float Tensor or array of the same shape, values in [0, 1].
        weight: optional float array/Tensor broadcastable to input, multiplies each element's loss.
        reduction: "none", "mean" (over all elements) or "sum".
        pos_weight: optional weight of the positive term, broadcast along the last axis.

    Returns:
        the loss: input's shape for "none", else a 0-d Tensor. Gradients to input and target.
    """
    _check_reduction(reduction)
    if tuple(target.shape) != tuple(input.shape):
        raise ValueError(f"Target size ({tuple(target.shape)}) must be the same as input size ({tuple(input.shape)})")
    return BinaryCrossEntropyWithLogits.apply(input, target, weight, pos_weight, reduction=reduction)


def sum_losses(loss_dict) -> Tensor | None:
    """The total loss: the sum of a model's named losses, as torchvision's ``train_one_epoch`` sums them.

    Args:
        loss_dict: {name: scalar Tensor}, e.g. the five losses ``MaskRCNN(images, targets)`` returns.

    Returns:
        Their sum in the dict's order (a composition of additions, differentiable), or None for an empty dict.
    """
    total = None
    for v in loss_dict.values():
        total = v if total is None else total + v
    return total
