"""SGD, param groups, WarmupMultiStepLR and clip_grad_norm_ against torch.optim, step by step,
and exact resumption from state dicts."""
import math

import numpy as np
import pytest

import minimaskrcnn.nn as nn
from minimaskrcnn import Tensor
from minimaskrcnn.optim import SGD, WarmupMultiStepLR, clip_grad_norm_, param_groups_weight_decay

torch = pytest.importorskip("torch")

SHAPES = [(3, 4), (5,), (2, 2, 3)]


def _gradient(p: np.ndarray, k: int) -> np.ndarray:
    """A deterministic, parameter-dependent 'gradient' (the same function feeds both libraries)."""
    return np.sin(3 * p + k) + 0.1 * p


def _start(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s) for s in SHAPES]


def _run_ours(arrays, steps, group_kwargs, **kwargs):
    params = [nn.Parameter(a.copy()) for a in arrays]
    groups = [dict(params=params[:2], **group_kwargs), dict(params=params[2:])] if group_kwargs else params
    opt = SGD(groups, **kwargs)
    for k in range(steps):
        for i, p in enumerate(params):
            p.grad = _gradient(p.data, k + i)
        opt.step()
    return params, opt


def _run_torch(arrays, steps, group_kwargs, **kwargs):
    params = [torch.nn.Parameter(torch.tensor(a)) for a in arrays]
    groups = [dict(params=params[:2], **group_kwargs), dict(params=params[2:])] if group_kwargs else params
    opt = torch.optim.SGD(groups, **kwargs)
    for k in range(steps):
        for i, p in enumerate(params):
            p.grad = torch.from_numpy(_gradient(p.detach().numpy(), k + i))
        opt.step()
    return params


@pytest.mark.parametrize("kwargs", [
    dict(lr=0.1),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, weight_decay=1e-2),
    dict(lr=0.02, momentum=0.8, dampening=0.3, weight_decay=1e-3),
    dict(lr=0.03, momentum=0.9, nesterov=True, weight_decay=1e-4),
    dict(lr=0.01, momentum=0.5, maximize=True),
])
@pytest.mark.parametrize("group_kwargs", [None, dict(weight_decay=0.0, lr=0.2)], ids=["one_group", "two_groups"])
def test_sgd_trajectory_equals_torch(kwargs, group_kwargs):
    arrays = _start()
    ours, _ = _run_ours(arrays, 20, group_kwargs, **kwargs)
    theirs = _run_torch(arrays, 20, group_kwargs, **kwargs)
    for p, t in zip(ours, theirs):
        ref = t.detach().numpy()
        np.testing.assert_allclose(p.data, ref, rtol=1e-10, atol=1e-10 * np.abs(ref).max())


def test_sgd_by_hand():
    p = nn.Parameter(np.array([1.0]))
    opt = SGD([p], lr=0.1, momentum=0.9, weight_decay=0.5)
    p.grad = np.array([2.0])
    opt.step()  # g = 2 + 0.5*1 = 2.5, buf = 2.5, p = 1 - 0.25
    assert p.data[0] == pytest.approx(0.75)
    p.grad = np.array([2.0])
    opt.step()  # g = 2 + 0.375 = 2.375, buf = 0.9*2.5 + 2.375 = 4.625, p = 0.75 - 0.4625
    assert p.data[0] == pytest.approx(0.2875)


def test_sgd_skips_parameters_without_gradient_and_keeps_float32():
    a, b = nn.Parameter(np.ones(2, np.float32)), nn.Parameter(np.ones(2, np.float32))
    opt = SGD([a, b], lr=0.5, momentum=0.9)
    a.grad = np.ones(2, np.float32)
    opt.step()
    np.testing.assert_array_equal(b.data, 1.0)
    assert a.data.dtype == np.float32 and a.data[0] == 0.5
    opt.zero_grad()
    assert a.grad is None


def test_state_dict_resumes_exactly():
    arrays = _start(1)
    kwargs = dict(lr=0.05, momentum=0.9, weight_decay=1e-3, nesterov=True)
    straight, _ = _run_ours(arrays, 20, None, **kwargs)

    params, opt = _run_ours(arrays, 10, None, **kwargs)
    saved_params = [p.data.copy() for p in params]
    saved_opt = opt.state_dict()
    assert set(saved_opt["state"]) == {0, 1, 2} and saved_opt["param_groups"][0]["params"] == [0, 1, 2]
    # a fresh optimizer (as after a restart) on fresh parameters
    resumed = [nn.Parameter(a) for a in saved_params]
    opt2 = SGD(resumed, lr=1.0)
    opt2.load_state_dict(saved_opt)
    assert opt2.param_groups[0]["lr"] == 0.05 and opt2.param_groups[0]["nesterov"]
    for k in range(10, 20):
        for i, p in enumerate(resumed):
            p.grad = _gradient(p.data, k + i)
        opt2.step()
    for p, q in zip(straight, resumed):
        np.testing.assert_array_equal(p.data, q.data)  # bit for bit


def test_torch_state_dict_layout():
    arrays = _start()
    _, ours = _run_ours(arrays, 2, None, lr=0.1, momentum=0.9)
    params = [torch.nn.Parameter(torch.tensor(a)) for a in arrays]
    theirs = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    for p in params:
        p.grad = torch.ones_like(p)
    theirs.step()
    ours_sd, theirs_sd = ours.state_dict(), theirs.state_dict()
    assert set(ours_sd) == set(theirs_sd) and list(ours_sd["state"]) == list(theirs_sd["state"])
    assert set(ours_sd["state"][0]) == set(theirs_sd["state"][0])
    for key in ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize", "params"):
        assert ours_sd["param_groups"][0][key] == theirs_sd["param_groups"][0][key], key


def test_load_state_dict_checks_group_sizes():
    opt = SGD([nn.Parameter(np.zeros(2))], lr=0.1)
    other = SGD([nn.Parameter(np.zeros(2)), nn.Parameter(np.zeros(2))], lr=0.1)
    with pytest.raises(ValueError):
        opt.load_state_dict(other.state_dict())


def test_argument_checks():
    p = [nn.Parameter(np.zeros(1))]
    with pytest.raises(ValueError):
        SGD(p, lr=-1.0)
    with pytest.raises(ValueError, match="Nesterov"):
        SGD(p, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="empty"):
        SGD([], lr=0.1)
    with pytest.raises(ValueError, match="more than one"):
        SGD([dict(params=p), dict(params=p)], lr=0.1)
    with pytest.raises(ValueError, match="required"):
        SGD(p)


# -------------------------------------------------------------------------------- param groups
def test_param_groups_weight_decay_exempts_norms_and_biases():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1), nn.GroupNorm(2, 4),
                          nn.FrozenBatchNorm2d(4), nn.Linear(4, 2))
    model[2].weight.requires_grad = False  # frozen parameters are left out
    groups = param_groups_weight_decay(model, 1e-4)
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert len(groups) == 3
    assert ids(groups[0]["params"]) == ids([model[0].weight, model[5].weight]) and groups[0]["weight_decay"] == 1e-4
    assert ids(groups[1]["params"]) == ids([model[1].weight, model[1].bias, model[3].weight, model[3].bias])
    assert ids(groups[2]["params"]) == ids([model[2].bias, model[5].bias])
    assert groups[1]["weight_decay"] == 0.0 and groups[2]["weight_decay"] == 0.0
    merged = param_groups_weight_decay(model, 1e-4, bias_weight_decay=None)
    assert ids(merged[0]["params"]) == ids([model[0].weight, model[2].bias, model[5].weight, model[5].bias])
    assert sum(len(g["params"]) for g in merged) == 8


# --------------------------------------------------------------------------------- LR schedule
@pytest.mark.parametrize(
    "milestones,warmup_iters,warmup_factor", [([8, 15], 5, 0.001), ([3], 0, 0.1), ([4, 30], 10, 1 / 3)]
)
def test_warmup_multistep_equals_torch_linear_then_multistep(milestones, warmup_iters, warmup_factor):
    base = [0.02, 0.01]
    ours_opt = SGD(
        [dict(params=[nn.Parameter(np.zeros(1))]), dict(params=[nn.Parameter(np.zeros(1))], lr=base[1])], lr=base[0]
    )
    ours = WarmupMultiStepLR(ours_opt, milestones, gamma=0.1, warmup_factor=warmup_factor, warmup_iters=warmup_iters)
    t_opt = torch.optim.SGD(
        [
            dict(params=[torch.nn.Parameter(torch.zeros(1))]),
            dict(params=[torch.nn.Parameter(torch.zeros(1))], lr=base[1]),
        ],
        lr=base[0],
    )
    schedulers = [torch.optim.lr_scheduler.MultiStepLR(t_opt, milestones, gamma=0.1)]
    if warmup_iters:
        warmup = torch.optim.lr_scheduler.LinearLR(t_opt, start_factor=warmup_factor, total_iters=warmup_iters)
        schedulers.insert(0, warmup)
    theirs = torch.optim.lr_scheduler.ChainedScheduler(schedulers)
    for it in range(25):
        np.testing.assert_allclose(
            [g["lr"] for g in ours_opt.param_groups],
            [g["lr"] for g in t_opt.param_groups],
            rtol=1e-10,
            err_msg=f"iteration {it}",
        )
        assert ours.get_last_lr() == [g["lr"] for g in ours_opt.param_groups]
        ours_opt.step()
        t_opt.step()
        ours.step()
        theirs.step()


def test_warmup_multistep_by_hand_and_resume():
    opt = SGD([nn.Parameter(np.zeros(1))], lr=1.0)
    sched = WarmupMultiStepLR(opt, [6, 8], gamma=0.5, warmup_factor=0.2, warmup_iters=4)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(9):
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    np.testing.assert_allclose(lrs, [0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25])
    state = sched.state_dict()
    opt2 = SGD([nn.Parameter(np.zeros(1))], lr=1.0)
    sched2 = WarmupMultiStepLR(opt2, [1], warmup_iters=0)
    sched2.load_state_dict(state)
    sched.step()
    sched2.step()
    assert sched2.get_last_lr() == sched.get_last_lr() == [0.25]
    constant = WarmupMultiStepLR(
        SGD([nn.Parameter(np.zeros(1))], lr=1.0), [], warmup_factor=0.3, warmup_iters=2, warmup_method="constant"
    )
    assert constant.get_last_lr() == [0.3]
    with pytest.raises(ValueError, match="increasing"):
        WarmupMultiStepLR(opt, [5, 2])


# ------------------------------------------------------------------------------------ clipping
@pytest.mark.parametrize("max_norm,norm_type", [(1.0, 2.0), (100.0, 2.0), (0.5, math.inf), (2.0, 1.0)])
def test_clip_grad_norm_equals_torch(max_norm, norm_type, rng):
    grads = [rng.standard_normal(s) for s in SHAPES]
    ours = [nn.Parameter(np.zeros(s)) for s in SHAPES]
    theirs = [torch.nn.Parameter(torch.zeros(s, dtype=torch.float64)) for s in SHAPES]
    for p, t, g in zip(ours, theirs, grads):
        p.grad, t.grad = g.copy(), torch.tensor(g)
    ours.append(nn.Parameter(np.zeros(2)))  # no gradient: skipped
    total = clip_grad_norm_(ours, max_norm, norm_type)
    total_t = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type)
    assert isinstance(total, float) and total == pytest.approx(total_t.item(), rel=1e-12)
    for p, t in zip(ours, theirs):
        np.testing.assert_allclose(p.grad, t.grad.numpy(), rtol=1e-12)


def test_clip_grad_norm_of_a_single_tensor():
    p = Tensor(np.zeros(2), requires_grad=True)
    p.grad = np.array([3.0, 4.0])
    assert clip_grad_norm_(p, 1.0) == 5.0
    np.testing.assert_allclose(p.grad, [0.6, 0.8], rtol=1e-6)
