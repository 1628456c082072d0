"""Solutions to lesson 11's exercises. Each block replaces the notebook cell of the same exercise."""

# %% exercise-1
class SmoothL1(mm.Function):
    @staticmethod
    def forward(ctx, d, beta):
        ctx.save_for_backward(d)
        ctx.beta = beta
        return np.asarray(np.where(np.abs(d) < beta, 0.5 * d**2 / beta, np.abs(d) - 0.5 * beta).sum())

    @staticmethod
    def backward(ctx, dout):
        (d,) = ctx.saved_tensors
        return dout * np.clip(d / ctx.beta, -1, 1), None

# %% exercise-2
def loss_box_all(box_regression, labels, reg_targets, beta=1 / 9):
    K = len(labels)
    deltas = box_regression.reshape(K, -1, 4)[np.arange(K), labels]   # class labels[k] for every RoI
    d = deltas - reg_targets
    return np.where(np.abs(d) < beta, 0.5 * d**2 / beta, np.abs(d) - 0.5 * beta).sum() / K

# %% exercise-3
answer_3 = "b"
