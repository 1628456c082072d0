# %% [markdown]
# # 04 · The autograd engine and gradient checking
#
# **Goal.** Build, in about sixty lines, a reverse-mode autograd engine for arrays, check its gradients
# against finite differences, and see that `minimaskrcnn`'s engine gives the same numbers. By the end you
# will have drawn the *V* of the finite-difference error against the step size, in float32 and float64,
# and the decision boundary of a small network trained with the engine you wrote.

# %% [markdown]
# ## The idea
#
# Mask R-CNN is trained by gradient descent on a sum of losses: $L = L_{cls} + L_{box} + L_{mask}$ on
# each sampled RoI (paper, §3), plus the RPN's two losses (torchvision trains all five together, end to
# end). So we need $\partial L / \partial w$ for every weight $w$: millions of numbers, from one scalar. *Reverse mode* gets all of them in one backward
# pass that costs about as much as the forward pass.
#
# Every op is a pair:
#
# | | computes | keeps for later |
# |---|---|---|
# | `forward(ctx, *inputs)` | the output from the inputs (plain arrays) | what backward needs, named: `ctx.save_for_backward(x)`, `ctx.x_shape` |
# | `backward(ctx, dout)` | one gradient per input, `dx = dout * ∂out/∂x` (the chain rule) | nothing |
#
# `dout` has the output's shape, each `dx` has its input's shape. The engine records, for every
# result, which op made it from which inputs (a graph), then walks the graph from the loss backwards
# in *reverse topological order* (a tensor only after every tensor that used it), so that each tensor's
# gradient is complete, summed over all its uses, before it is passed on.
#
# Two details matter in practice:
#
# * **Broadcasting.** `x + b` with `x` of shape (N, C) and `b` of shape (C,) copies `b` N times; the
#   gradient of `b` is then the *sum* of `dout` over those copies. One helper, `unbroadcast`, undoes it.
# * **Checking.** A backward written by hand is easy to get wrong. The central difference
#   $\frac{f(x+\varepsilon) - f(x-\varepsilon)}{2\varepsilon}$ gives each partial derivative with
#   error $O(\varepsilon^2)$, in float64, and is the referee for every backward in this project.

# %%
import time

import matplotlib.pyplot as plt
import numpy as np

import minimaskrcnn as mm
from minimaskrcnn.function import unbroadcast

from _helpers import QUICK, exercise, log

plt.rcParams["figure.dpi"] = 80
rng = np.random.default_rng(0)

# %% [markdown]
# ## Build it
#
# ### Step 1: a tensor that remembers where it came from
# `TinyTensor` holds an array, a gradient, and `node`: the op that made it, that op's context and the
# tensors it read. A `TinyFunction` runs `forward` on raw arrays and wires the result into the graph.

# %%
class Context:
    """What one op's forward keeps for its backward."""

    def save_for_backward(self, *arrays):
        self.saved = arrays


class TinyTensor:
    def __init__(self, data, node=None):
        self.data = np.asarray(data, dtype=np.float64)
        self.grad = None
        self.node = node  # (function, ctx, parents) or None for a leaf

    @property
    def shape(self):
        return self.data.shape


class TinyFunction:
    @classmethod
    def apply(cls, *inputs):
        ctx = Context()
        out = cls.forward(ctx, *[x.data for x in inputs])
        return TinyTensor(out, node=(cls, ctx, inputs))

# %% [markdown]
# ### Step 2: ops, each forward next to its backward
# `unbroadcast` sums a gradient back to the shape of the input it belongs to.

# %%
def tiny_unbroadcast(grad, shape):
    """Sum grad over the axes that broadcasting added or stretched, so that it has ``shape``."""
    while grad.ndim > len(shape):            # leading axes that broadcasting prepended
        grad = grad.sum(axis=0)
    for axis, n in enumerate(shape):         # axes of length 1 that were stretched
        if n == 1 and grad.shape[axis] != 1:
            grad = grad.sum(axis=axis, keepdims=True)
    return grad


class Add(TinyFunction):
    @staticmethod
    def forward(ctx, a, b):
        ctx.a_shape, ctx.b_shape = a.shape, b.shape
        return a + b

    @staticmethod
    def backward(ctx, dout):  # d(a+b)/da = 1, d(a+b)/db = 1
        return tiny_unbroadcast(dout, ctx.a_shape), tiny_unbroadcast(dout, ctx.b_shape)


class Mul(TinyFunction):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, dout):  # d(ab)/da = b, d(ab)/db = a
        a, b = ctx.saved
        return tiny_unbroadcast(dout * b, a.shape), tiny_unbroadcast(dout * a, b.shape)


class MatMul(TinyFunction):
    @staticmethod
    def forward(ctx, a, b):  # (N, K) @ (K, M) -> (N, M)
        ctx.save_for_backward(a, b)
        return a @ b

    @staticmethod
    def backward(ctx, dout):  # dout (N, M): da = dout b^T (N, K), db = a^T dout (K, M)
        a, b = ctx.saved
        return dout @ b.T, a.T @ dout


class Relu(TinyFunction):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x > 0)  # the mask is all backward needs
        return np.maximum(x, 0)

    @staticmethod
    def backward(ctx, dout):
        (mask,) = ctx.saved
        return (dout * mask,)


class Sum(TinyFunction):
    @staticmethod
    def forward(ctx, x):
        ctx.x_shape = x.shape
        return x.sum()

    @staticmethod
    def backward(ctx, dout):  # every element contributed with weight 1
        return (np.broadcast_to(dout, ctx.x_shape).copy(),)

# %% [markdown]
# ### Step 3: the backward pass
# Order the graph so that every tensor comes after all the tensors that use it (a depth-first search,
# reversed), then hand each tensor's finished gradient to its op's backward.

# %%
def topological_order(root):
    order, seen = [], set()

    def visit(t):
        if id(t) in seen:
            return
        seen.add(id(t))
        if t.node is not None:
            for parent in t.node[2]:
                visit(parent)
        order.append(t)  # after everything it was made from

    visit(root)
    return order[::-1]  # root first: each tensor before the tensors it was made from


def backward(root):
    grads = {id(root): np.ones_like(root.data)}  # dL/dL = 1
    for t in topological_order(root):
        g = grads.pop(id(t), None)
        if g is None:
            continue
        if t.node is None:  # a leaf: keep its gradient
            t.grad = g if t.grad is None else t.grad + g
            continue
        fn, ctx, parents = t.node
        for parent, pg in zip(parents, fn.backward(ctx, g)):
            assert pg.shape == parent.shape, (fn.__name__, pg.shape, parent.shape)
            grads[id(parent)] = grads.get(id(parent), 0) + pg  # a tensor used twice gets both

# %% [markdown]
# ### Step 4: a first expression
# One layer of a network and a made-up loss: $L = \sum \mathrm{relu}(x W + b) \odot v$, with
# x (N=4, K=3), W (3, M=5), b (5,) broadcast over rows, v (4, 5).

# %%
x_np, W_np, b_np, v_np = (rng.standard_normal(s) for s in [(4, 3), (3, 5), (5,), (4, 5)])

x, W, b, v = (TinyTensor(a) for a in (x_np, W_np, b_np, v_np))
loss = Sum.apply(Mul.apply(Relu.apply(Add.apply(MatMul.apply(x, W), b)), v))
backward(loss)
log("loss", loss.data)
for name, t in [("dx", x), ("dW", W), ("db", b), ("dv", v)]:
    log(name, t.grad)

# %% [markdown]
# ## Check it
#
# ### Against finite differences
# Nudge one element at a time by ±ε and watch the loss. `rel_error` is CS231n's
# $|a-b| / \max(|a|+|b|, 10^{-8})$; with float64 and ε = 1e-6 a correct backward gives about 1e-8 or less.

# %%
def numeric_gradient(f, x, eps=1e-6):
    """Central differences of the scalar f() with respect to every element of the array x (in place)."""
    grad = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        old = x[idx]
        x[idx] = old + eps
        f_plus = f()
        x[idx] = old - eps
        f_minus = f()
        x[idx] = old
        grad[idx] = (f_plus - f_minus) / (2 * eps)
    return grad


def tiny_loss():
    return Sum.apply(Mul.apply(Relu.apply(Add.apply(MatMul.apply(x, W), b)), v)).data


for name, t in [("x", x), ("W", W), ("b", b), ("v", v)]:
    err = mm.rel_error(t.grad, numeric_gradient(tiny_loss, t.data)).max()
    print(f"d{name}: max relative error {err:.1e}")
    assert err < 1e-6

# %% [markdown]
# ### Against minimaskrcnn (and PyTorch)
# The library's engine is the same design, grown up: `Function.apply`, `ctx.save_for_backward`,
# `Tensor.backward()`. Write the same expression with its Tensors; the gradients must agree to
# rounding.

# %%
xt, Wt, bt, vt = (mm.tensor(a, requires_grad=True) for a in (x_np, W_np, b_np, v_np))
loss_mm = (((xt @ Wt) + bt).relu() * vt).sum()
loss_mm.backward()
for name, ours, lib in [("x", x, xt), ("W", W, Wt), ("b", b, bt), ("v", v, vt)]:
    err = np.abs(ours.grad - lib.grad).max()
    print(f"d{name}: max |tiny - minimaskrcnn| = {err:.1e}")
    assert err < 1e-12

try:
    import torch

    xs, Ws, bs, vs = (torch.tensor(a, requires_grad=True) for a in (x_np, W_np, b_np, v_np))
    (torch.relu(xs @ Ws + bs) * vs).sum().backward()
    for name, ours, ref in [("x", x, xs), ("W", W, Ws), ("b", b, bs), ("v", v, vs)]:
        err = np.abs(ours.grad - ref.grad.numpy()).max()
        print(f"d{name}: max |tiny - torch| = {err:.1e}")
        assert err < 1e-12
except ImportError:
    print("torch is not installed: the PyTorch comparison was skipped")

# %% [markdown]
# ### `minimaskrcnn.gradcheck`
# The library's checker does what `numeric_gradient` did, for every input that requires a gradient,
# contracting with a random upstream gradient `dout` so that non-scalar outputs are checked too.
# Every op in the project has a test that calls it in float64.
#
# Its report gives, per input, the largest absolute difference |analytic − numeric| and the largest
# relative error. Differences below `atol` (1e-9) count as relative error 0: where a gradient is about
# 0, the relative error of pure rounding noise can be large and means nothing. So a line like
# "max |analytic - numeric| 3e-10, max relative error 0.00e+00" is a pass whose only remaining
# difference is rounding, of the same size as the errors printed by hand above.

# %%
result = mm.gradcheck(lambda x, W, b: ((x @ W) + b).relu(), [xt, Wt, bt])
print(result.report())
assert result.passed

# %% [markdown]
# ## See it
#
# ### The V: how small should ε be?
# The central difference has a *truncation* error $\approx \varepsilon^2 |f'''| / 6$ that shrinks with
# ε, and a *rounding* error $\approx u |f| / \varepsilon$ (u is the unit roundoff: 6e-8 in float32,
# 1e-16 in float64) that grows as ε shrinks. Their sum is a V whose bottom sits near
# $\varepsilon \approx u^{1/3}$: about 1e-5 in float64, but 5e-3 in float32, where even the bottom of
# the V is only about 1e-3 accurate (and below ε ≈ 1e-4, x + ε rounds back to x: the error is 100%).
# That is why gradient checks run in float64.

# %%
def f_and_grad(z):
    """f(z) = sum(sigmoid(z) * z) and its exact gradient."""
    s = 1 / (1 + np.exp(-z))
    return (s * z).sum(), s + z * s * (1 - s)


z64 = rng.standard_normal(20)
epsilons = np.logspace(-12, -1, 45)
fig, ax = plt.subplots(figsize=(6, 3.5))
for dtype in (np.float32, np.float64):
    z = z64.astype(dtype)
    _, exact = f_and_grad(z64)
    errors = []
    for eps in epsilons:
        num = numeric_gradient(lambda: f_and_grad(z)[0], z, eps=dtype(eps))
        errors.append(np.maximum(mm.rel_error(num, exact).max(), 1e-17))
    ax.loglog(epsilons, errors, "o-", ms=3, label=np.dtype(dtype).name)
ax.set_xlabel("step ε")
ax.set_ylabel("max relative error")
ax.set_title("central differences: truncation (right) vs rounding (left)")
ax.legend()
plt.show()

# %% [markdown]
# ### Train a small network with the library's engine
# Two interleaved spirals, a 2 → 32 → 32 → 2 network, softmax cross-entropy written with the engine's
# ops (`exp`, `log`, `max`, indexing), and plain gradient descent with momentum: `p.data -= lr * velocity`.
# Nothing here knows about networks: the engine just follows the graph.

# %%
def spirals(n, noise=0.2, seed=0):
    r = np.random.default_rng(seed)
    t = np.sqrt(r.random(n)) * 3 * np.pi
    pts = np.stack([t * np.cos(t), t * np.sin(t)], 1) / 10
    X = np.concatenate([pts, -pts]) + noise * r.standard_normal((2 * n, 2)) / 10
    y = np.concatenate([np.zeros(n, int), np.ones(n, int)])
    return X.astype(np.float32), y


def init(shape):  # He initialisation
    return mm.tensor(rng.standard_normal(shape).astype(np.float32) * np.sqrt(2 / shape[0]), requires_grad=True)


def mlp(X, params):
    W1, b1, W2, b2, W3, b3 = params
    h = (X @ W1 + b1).relu()
    h = (h @ W2 + b2).relu()
    return h @ W3 + b3


def cross_entropy(logits, y):
    """Mean softmax cross-entropy; logits (N, L), y (N,) int."""
    m = logits.max(axis=1, keepdims=True).detach()  # subtracting the max keeps exp() finite
    log_sum_exp = (logits - m).exp().sum(axis=1).log() + m.reshape(-1)
    return (log_sum_exp - logits[np.arange(len(y)), y]).mean()


X_np, y_np = spirals(200)
X_t = mm.tensor(X_np)
params = [init((2, 32)), mm.zeros(32, requires_grad=True), init((32, 32)), mm.zeros(32, requires_grad=True),
          init((32, 2)), mm.zeros(2, requires_grad=True)]
velocity = [np.zeros_like(p.data) for p in params]
num_steps = 150 if QUICK else 1500
start = time.perf_counter()
for step in range(num_steps):
    loss = cross_entropy(mlp(X_t, params), y_np)
    for p in params:
        p.grad = None
    loss.backward()
    for p, vel in zip(params, velocity):
        vel *= 0.9
        vel += p.grad
        p.data -= 0.1 * vel
    if step % (num_steps // 5) == 0 or step == num_steps - 1:
        print(f"step {step:4d}  loss {loss.item():.4f}")
accuracy = (mlp(X_t, params).numpy().argmax(1) == y_np).mean()
print(f"training accuracy {accuracy:.3f} after {num_steps} steps ({time.perf_counter() - start:.1f} s)")
assert loss.item() < (0.5 if QUICK else 0.1)

# %%
grid = np.stack(np.meshgrid(np.linspace(-1.1, 1.1, 150), np.linspace(-1.1, 1.1, 150)), -1).reshape(-1, 2)
with mm.no_grad():
    prob = mlp(mm.tensor(grid.astype(np.float32)), params).numpy()
fig, ax = plt.subplots(figsize=(4, 4))
ax.contourf(grid[:, 0].reshape(150, 150), grid[:, 1].reshape(150, 150),
            (prob[:, 1] - prob[:, 0]).reshape(150, 150), levels=[-1e9, 0, 1e9], colors=["#cde", "#fdc"])
ax.scatter(*X_np[y_np == 0].T, s=6, c="tab:blue", label="spiral 0")
ax.scatter(*X_np[y_np == 1].T, s=6, c="tab:orange", label="spiral 1")
ax.set_title("decision boundary learned through the engine\n(shading: the class the network predicts)", fontsize=10)
ax.set_xlabel("x1"), ax.set_ylabel("x2"), ax.legend(fontsize=8, loc="lower right")
ax.set_aspect("equal")
plt.show()

# %% [markdown]
# ### Where did the NaN come from?
# A NaN in the loss usually starts many ops earlier. Under `mm.detect_anomaly()` each op checks its
# output (and its gradients in backward) and the error names the op and the line that created it.

# %%
with mm.detect_anomaly(), np.errstate(invalid="ignore"):
    try:
        a = mm.tensor([1.0, -2.0, 3.0], requires_grad=True)
        (a * 2).log().sum().backward()
    except mm.AnomalyError as e:
        print(f"caught: {e.op} -> {str(e).splitlines()[0][:90]}")

# %% [markdown]
# ## Exercises
#
# **Exercise 1.** Write the sigmoid as a `minimaskrcnn` `Function`: `forward(ctx, x)` returns
# $\sigma(x) = 1/(1+e^{-x})$, `backward(ctx, dout)` returns `dx`. Hint: $\sigma' = \sigma(1-\sigma)$, so
# save the *output*. The check runs `mm.gradcheck` on it and compares it with `mm.sigmoid`.

# %% tags=exercise-1
class MySigmoid(mm.Function):
    @staticmethod
    def forward(ctx, x):
        raise NotImplementedError  # your code here

    @staticmethod
    def backward(ctx, dout):
        raise NotImplementedError  # your code here

# %% tags=check-1
with exercise(1, "04_autograd_and_gradcheck"):
    z = mm.tensor(rng.standard_normal((3, 4)), requires_grad=True)
    assert np.allclose(MySigmoid.apply(z).numpy(), mm.sigmoid(z).numpy()), "forward differs from mm.sigmoid"
    check = mm.gradcheck(lambda t: MySigmoid.apply(t), [z])
    assert check.passed, check.report()

# %% [markdown]
# **Exercise 2 (break it on purpose).** Below, `BadAdd` forgets to undo broadcasting. Run the cell:
# the engine refuses a gradient of the wrong shape. Then write `my_unbroadcast(grad, shape)` without
# looking at `tiny_unbroadcast` above; the check tries it on several shapes against the library's
# `unbroadcast`.

# %%
class BadAdd(mm.Function):
    @staticmethod
    def forward(ctx, a, b):
        return a + b

    @staticmethod
    def backward(ctx, dout):
        return dout, dout  # wrong when a or b was broadcast


try:
    BadAdd.apply(mm.tensor(np.ones((3, 4)), requires_grad=True), mm.tensor(np.ones(4), requires_grad=True)).sum().backward()
except RuntimeError as e:
    print("RuntimeError:", e)

# %% tags=exercise-2
def my_unbroadcast(grad, shape):
    """Sum grad (an array) down to ``shape``, undoing NumPy broadcasting."""
    raise NotImplementedError  # your code here

# %% tags=check-2
with exercise(2, "04_autograd_and_gradcheck"):
    for big, small in [((3, 4), (4,)), ((3, 4), (3, 1)), ((2, 3, 4), (1, 4)), ((2, 3, 4), ()), ((5,), (5,))]:
        g = rng.standard_normal(big)
        got = my_unbroadcast(g, small)
        assert got.shape == small, f"shape {got.shape} for {small}"
        assert np.allclose(got, unbroadcast(g, small)), f"wrong values for {big} -> {small}"

# %% [markdown]
# **Exercise 3.** The box head's classifier (lesson 11) uses softmax cross-entropy. Written as a
# composition of ops (as `cross_entropy` above) it builds a graph of six ops; written as one fused
# `Function` its backward is one line: $\frac{\partial L}{\partial \text{logits}} =
# (\mathrm{softmax}(\text{logits}) - \text{onehot}(y)) / N$. Write `FusedCrossEntropy` with
# `forward(ctx, logits, y)` returning the mean loss as a 0-d array (`np.asarray(...)`: a bare NumPy
# scalar would not keep its float64) and `backward` returning
# `(dlogits, None)`.

# %% tags=exercise-3
class FusedCrossEntropy(mm.Function):
    @staticmethod
    def forward(ctx, logits, y):
        raise NotImplementedError  # your code here

    @staticmethod
    def backward(ctx, dout):
        raise NotImplementedError  # your code here

# %% tags=check-3
with exercise(3, "04_autograd_and_gradcheck"):
    logits = mm.tensor(rng.standard_normal((6, 4)) * 3, requires_grad=True)
    labels = rng.integers(0, 4, 6)
    fused = FusedCrossEntropy.apply(logits, labels)
    assert abs(fused.item() - cross_entropy(logits, labels).item()) < 1e-10, "loss differs from the composed one"
    check = mm.gradcheck(lambda t: FusedCrossEntropy.apply(t, labels), [logits])
    assert check.passed, check.report()

# %% [markdown]
# **Exercise 4 (why).** `mm.gradcheck` refuses float32 inputs. Looking at the V above, why?
# Set `answer_4` to one letter:
#
# * (a) the backward of most ops is wrong in float32;
# * (b) `f(x+ε) - f(x-ε)` subtracts two nearly equal float32 numbers, which keeps only a few significant
#   digits, so even the best ε leaves an error around 1e-4 to 1e-3, too large to tell a right backward
#   from a slightly wrong one;
# * (c) float32 cannot represent ε = 1e-6.

# %% tags=exercise-4
answer_4 = None  # "a", "b" or "c"

# %% tags=check-4
with exercise(4, "04_autograd_and_gradcheck"):
    if answer_4 is None:
        raise NotImplementedError
    assert answer_4 == "b", "not quite: look at where the float32 curve bottoms out"

# %% [markdown]
# ## Summary
# * An op is a forward/backward pair; the engine records the graph and calls the backwards in reverse
#   topological order, summing the gradients of tensors used more than once.
# * Broadcasting in forward means summing in backward (`unbroadcast`).
# * Central differences in float64 with ε ≈ 1e-6 are the referee: a correct backward agrees to ~1e-8.
#
# Next: lesson 05 writes the first op with a real backward to derive, the convolution.
