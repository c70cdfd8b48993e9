"""Faults the samplers must refuse loudly (issue 14, "Nothing silent"): bdk.samplers, bdk.langevin, bdk.metrics.

Every refusal is checked twice: the error says what is wrong, and the weights and the sampler's state
are bit for bit what they were before (compared with a saved copy); where a refusal is followed by
more sampling, the result is compared with a fresh sampler loaded from that copy. Expected values
(outputs of frozen models, the first bad step of a chain) are computed here by independent code.
"""

from __future__ import annotations

import copy
import math
import re

import numpy as np
import pytest
import torch
from torch import nn

from bdk import langevin as L
from bdk import metrics
from bdk.samplers import SGLD, PosteriorSamples, pSGLD, sgld_sample

NAN, INF = float("nan"), float("inf")


pytestmark = pytest.mark.usefixtures("one_thread")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# SGLD and pSGLD: helpers


def _make(cls, params, **kwargs):
    if cls is pSGLD:
        return pSGLD(params, lr=kwargs.pop("lr", 1e-2), num_data=50, **kwargs)
    return SGLD(params, lr=kwargs.pop("lr", 1e-2), **kwargs)


def _set_grads(params, scale: float = 1.0) -> None:
    for p in params:  # the gradient of sum |p|^2, plus an offset so that it is never zero
        p.grad = scale * (2.0 * p.detach() + 0.5)


def _trained(cls, steps: int = 2):
    """Two parameter groups (the second with its own lr), a seeded generator, ``steps`` steps taken."""
    torch.manual_seed(0)
    a = torch.randn(4, 3, requires_grad=True)
    b = torch.randn(5, requires_grad=True)
    opt = _make(cls, [{"params": [a]}, {"params": [b], "lr": 0.02}], generator=gen(1))
    for _ in range(steps):
        _set_grads([a, b])
        opt.step()
    return [a, b], opt


def _snapshot(params, opt):
    return [p.detach().clone() for p in params], copy.deepcopy(opt.state_dict())


def _equal(x, y) -> bool:
    if isinstance(x, torch.Tensor):
        return isinstance(y, torch.Tensor) and x.dtype == y.dtype and torch.equal(x, y)
    if isinstance(x, dict):
        return isinstance(y, dict) and x.keys() == y.keys() and all(_equal(x[k], y[k]) for k in x)
    if isinstance(x, (list, tuple)):
        return isinstance(y, (list, tuple)) and len(x) == len(y) and all(_equal(u, v) for u, v in zip(x, y))
    return x == y


def _assert_unchanged(params, opt, weights, state) -> None:
    for p, w in zip(params, weights):
        assert torch.equal(p.detach(), w), "a refused step moved the weights"
    now = opt.state_dict()
    for key in ("state", "num_steps", "generator"):
        assert _equal(now[key], state[key]), f"a refused step changed the optimizer's {key!r}"


BAD_GROUP_VALUES = [
    (SGLD, "lr", 0.0), (SGLD, "lr", -0.01), (SGLD, "lr", NAN), (SGLD, "lr", INF),
    (SGLD, "temperature", -1.0), (SGLD, "temperature", NAN), (SGLD, "temperature", INF),
    (pSGLD, "lr", -0.01), (pSGLD, "lr", INF),
    (pSGLD, "temperature", -1.0), (pSGLD, "temperature", NAN), (pSGLD, "temperature", INF),
    (pSGLD, "alpha", -0.1), (pSGLD, "alpha", 1.5), (pSGLD, "alpha", NAN),
    (pSGLD, "eps", 0.0), (pSGLD, "eps", -1e-5), (pSGLD, "eps", INF), (pSGLD, "eps", NAN),
    (pSGLD, "num_data", 0), (pSGLD, "num_data", NAN),
]


# ---------------------------------------------------------------------------------------------
# 1. hyperparameters checked at every step, before anything changes


@pytest.mark.parametrize("cls,field,value", BAD_GROUP_VALUES, ids=lambda v: getattr(v, "__name__", repr(v)))
def test_a_bad_hyperparameter_set_on_a_group_is_refused_at_the_step_and_changes_nothing(cls, field, value):
    params, opt = _trained(cls)
    _set_grads(params)
    weights, state = _snapshot(params, opt)
    opt.param_groups[1][field] = value
    with pytest.raises(ValueError) as err:
        opt.step()
    msg = str(err.value)
    assert "step 3" in msg and "param_groups[1]" in msg, msg
    assert f"{field}={value!r}" in msg, msg
    assert "scheduler" in msg, msg  # says what may have set it
    _assert_unchanged(params, opt, weights, state)


@pytest.mark.parametrize("cls", [SGLD, pSGLD])
def test_after_a_refused_step_the_chain_continues_exactly_as_from_the_saved_state(cls):
    params, opt = _trained(cls)
    weights, state = _snapshot(params, opt)
    opt.param_groups[0]["temperature"] = -1.0
    _set_grads(params)
    with pytest.raises(ValueError):
        opt.step()
    opt.param_groups[0]["temperature"] = 1.0
    opt.step()
    # a fresh optimizer loaded from the copy taken before the refusal
    fresh = [w.clone().requires_grad_(True) for w in weights]
    other = _make(cls, [{"params": [fresh[0]]}, {"params": [fresh[1]], "lr": 0.02}], generator=gen(99))
    other.load_state_dict(state)
    _set_grads(fresh)
    other.step()
    for p, q in zip(params, fresh):
        assert torch.equal(p.detach(), q.detach())


@pytest.mark.parametrize("cls", [SGLD, pSGLD])
def test_lr_times_temperature_that_overflows_is_refused(cls):
    # each is a finite number, but the noise variance lr * T = 1e400 is inf in floating point
    params, opt = _trained(cls)
    _set_grads(params)
    weights, state = _snapshot(params, opt)
    opt.param_groups[0].update(lr=1e200, temperature=1e200)
    with pytest.raises(ValueError, match=r"step 3, param_groups\[0\].*overflows"):
        opt.step()
    _assert_unchanged(params, opt, weights, state)


@pytest.mark.parametrize("cls", [SGLD, pSGLD])
def test_a_scheduler_driving_lr_negative_is_refused_before_any_group_moves(cls):
    params, opt = _trained(cls, steps=0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 - t / 2)  # 1, 0.5, 0, -0.5
    for _ in range(2):
        _set_grads(params)
        opt.step()
        sched.step()
    _set_grads(params)
    weights, state = _snapshot(params, opt)
    with pytest.raises(ValueError, match=r"param_groups\[0\].*lr=0\.0.*scheduler"):
        opt.step()
    _assert_unchanged(params, opt, weights, state)


@pytest.mark.parametrize("cls", [SGLD, pSGLD])
def test_a_non_finite_gradient_in_a_later_group_leaves_the_earlier_groups_unmoved(cls):
    params, opt = _trained(cls)
    _set_grads(params)
    params[1].grad[2] = NAN
    weights, state = _snapshot(params, opt)
    with pytest.raises(FloatingPointError, match=r"step 3.*param_groups\[1\]"):
        opt.step()
    _assert_unchanged(params, opt, weights, state)


@pytest.mark.parametrize("cls,field,value", [(SGLD, "temperature", -1.0), (SGLD, "lr", INF),
                                             (pSGLD, "alpha", 2.0), (pSGLD, "eps", 0.0)])
def test_a_bad_hyperparameter_in_a_constructor_group_is_refused_at_construction(cls, field, value):
    p = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match=rf"param_groups\[0\].*{field}="):
        _make(cls, [{"params": [p], field: value}])


@pytest.mark.parametrize("cls", [SGLD, pSGLD])
def test_add_param_group_refuses_a_bad_hyperparameter_and_keeps_the_groups(cls):
    params, opt = _trained(cls)
    extra = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match=r"param_groups\[2\].*temperature=-0\.5"):
        opt.add_param_group({"params": [extra], "temperature": -0.5})
    assert len(opt.param_groups) == 2


# ---------------------------------------------------------------------------------------------
# 2. complex and non-floating-point parameters


@pytest.mark.parametrize("cls", [SGLD, pSGLD])
def test_complex_parameters_are_refused_at_construction(cls):
    z = torch.zeros(3, dtype=torch.complex64, requires_grad=True)
    with pytest.raises(ValueError, match=r"complex64.*wrong temperature"):
        _make(cls, [z])


@pytest.mark.parametrize("cls", [SGLD, pSGLD])
def test_integer_parameters_are_refused_at_construction(cls):
    with pytest.raises(ValueError, match=r"int64.*floating-point"):
        _make(cls, [torch.zeros(3, dtype=torch.int64)])


@pytest.mark.parametrize("cls", [SGLD, pSGLD])
def test_add_param_group_refuses_complex_parameters_and_keeps_the_groups(cls):
    params, opt = _trained(cls)
    z = torch.zeros(3, dtype=torch.complex64, requires_grad=True)
    with pytest.raises(ValueError, match=r"param_groups\[2\].*complex64"):
        opt.add_param_group({"params": [z]})
    assert len(opt.param_groups) == 2
    _set_grads(params)
    opt.step()  # the optimizer still works


@pytest.mark.parametrize("cls", [SGLD, pSGLD])
def test_a_parameter_made_complex_after_construction_is_refused_at_the_step(cls):
    params, opt = _trained(cls)
    params[1].data = torch.zeros(5, dtype=torch.complex64)
    params[1].grad = torch.ones(5, dtype=torch.complex64)
    params[0].grad = torch.ones(4, 3)
    weights, state = _snapshot(params, opt)
    with pytest.raises(ValueError, match=r"step 3.*param_groups\[1\].*complex64"):
        opt.step()
    _assert_unchanged(params, opt, weights, state)


# ---------------------------------------------------------------------------------------------
# 3. PosteriorSamples and models with buffers (BatchNorm running statistics)


def _bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2))


def _collect_with_moving_buffers(model, store, x, num: int = 3):
    """Change parameters and running statistics between samples; return each sample's own outputs on ``x``."""
    g = gen(3)
    refs = []
    for s in range(num):
        model.train()
        with torch.no_grad():
            model(torch.randn(32, 3, generator=g) * (s + 1) + s)  # moves the running mean and variance
            for p in model.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=g))
        store.add()
        frozen = copy.deepcopy(model).eval()  # what sample s predicts: its parameters and its buffers
        with torch.no_grad():
            refs.append(frozen(x))
    return torch.stack(refs)


@pytest.mark.parametrize("method", ["auto", "vmap", "loop"])
def test_posterior_samples_predict_with_each_samples_own_buffers(method):
    model = _bn_model()
    store = PosteriorSamples(model)
    x = torch.randn(6, 3, generator=gen(4))
    expected = _collect_with_moving_buffers(model, store, x)
    torch.testing.assert_close(store.forward_all(x, method=method), expected)
    torch.testing.assert_close(store.predictive(x, method=method), torch.softmax(expected, -1).mean(0))


def test_posterior_samples_state_dict_keeps_the_buffers():
    model = _bn_model()
    store = PosteriorSamples(model)
    x = torch.randn(6, 3, generator=gen(4))
    expected = _collect_with_moving_buffers(model, store, x)
    other = PosteriorSamples(model)
    other.load_state_dict(store.state_dict())
    torch.testing.assert_close(other.forward_all(x), expected)


def test_posterior_samples_add_of_a_dict_without_the_models_buffers_is_refused():
    model = _bn_model()
    store = PosteriorSamples(model)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match=r"1\.running_mean.*named_buffers"):
        store.add(params)
    assert len(store) == 0 and store.num_added == 0
    store.add({**params, **{n: b.clone() for n, b in model.named_buffers()}})
    assert len(store) == 1


# ---------------------------------------------------------------------------------------------
# 4. PosteriorSamples.add: names, shapes and dtypes


def _linear_store(**kwargs):
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    store = PosteriorSamples(model, **kwargs)
    store.add()
    return model, store


def _params(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("shape", [(1, 3), (3,), (), (2, 1)])
def test_add_refuses_a_wrongly_shaped_tensor_naming_it_and_both_shapes(shape):
    model, store = _linear_store()
    before = store.stacked()
    bad = _params(model)
    bad["weight"] = torch.ones(shape)
    with pytest.raises(ValueError, match=rf"'weight'.*\(2, 3\).*{re.escape(str(shape))}"):
        store.add(bad)
    assert len(store) == 1 and store.num_added == 1
    assert _equal(store.stacked(), before)


def test_add_refuses_names_the_model_does_not_have():
    model, store = _linear_store()
    bad = {**_params(model), "scale": torch.ones(1)}
    with pytest.raises(ValueError, match=r"'scale'"):
        store.add(bad)
    assert len(store) == 1 and store.num_added == 1


def test_add_refuses_a_dtype_that_would_be_rounded_and_changes_nothing_in_a_full_ring():
    model, store = _linear_store(max_samples=1, when_full="drop_oldest")
    before = store.stacked()
    bad = _params(model)
    bad["weight"] = (bad["weight"].double() + 1e-12)  # float64 values a float32 store would round
    with pytest.raises(ValueError, match=r"'weight'.*torch\.float64.*torch\.float32"):
        store.add(bad)
    assert store.num_added == 1 and _equal(store.stacked(), before)


def test_add_accepts_a_dtype_the_store_holds_exactly():
    model, store = _linear_store()
    given = _params(model)
    given["weight"] = given["weight"].half()
    store.add(given)
    assert torch.equal(store.stacked()["weight"][1], given["weight"].float())


def test_load_state_dict_refuses_wrongly_shaped_samples_and_keeps_the_store():
    model, store = _linear_store()
    store.add()
    state = store.state_dict()
    state["samples"] = dict(state["samples"], weight=state["samples"]["weight"][:, :1])  # (S, 1, 3)
    before = store.stacked()
    with pytest.raises(ValueError, match=r"'weight'.*\(2, 3\).*\(2, 1, 3\)"):
        store.load_state_dict(state)
    assert len(store) == 2 and _equal(store.stacked(), before)


# ---------------------------------------------------------------------------------------------
# 5. euler_maruyama, mala, sgld_sample: blame grad_U, not the step size, for a NaN at finite positions


def _nan_above(threshold: float):
    """grad U of U(x) = -x_1 (a constant push up), NaN wherever x_1 > threshold (a buggy gradient)."""

    def grad(x):
        g = torch.zeros_like(x)
        g[:, 0] = -1.0
        g[x[:, 0] > threshold] = NAN
        return g

    return grad


def test_euler_maruyama_names_grad_U_the_step_and_the_particles_for_a_nan_gradient():
    # temperature 0: x_k = x0 - k h grad = x0 + 0.1 k; grad is evaluated at x_{k-1}, so the two
    # particles starting at 0.55 first see x = 1.05 > 1 at step 6 (the others later)
    x0 = torch.tensor([[0.0], [0.55], [0.55], [0.05], [0.32]], dtype=torch.float64)
    with pytest.raises(FloatingPointError) as err:
        L.euler_maruyama(_nan_above(1.0), x0, 0.1, 50, temperature=0.0)
    msg = str(err.value)
    assert "grad_U" in msg and "step 6" in msg and "2 of 5 particles" in msg, msg
    assert "too large" not in msg and "reduce step_size" not in msg, msg


def _first_nan_step_by_hand(x0, h, temperature, draw):
    """The independent loop: first step k whose gradient (at x_{k-1}) is NaN, and how many particles."""
    x = x0.clone()
    for k in range(1, 10_000):
        bad = x[:, 0] > 1.0
        if bad.any():
            return k, int(bad.sum())
        x = x + h + math.sqrt(2 * temperature * h) * draw(x.shape)
    raise AssertionError("no NaN within 10000 steps")


@pytest.mark.parametrize("with_generator", [True, False])
def test_euler_maruyama_finds_the_first_nan_gradient_step_with_noise(with_generator):
    x0 = torch.zeros(40, 1, dtype=torch.float64)
    h, temperature = 0.005, 0.01
    if with_generator:
        g = gen(7)
        k, m = _first_nan_step_by_hand(x0, h, temperature, lambda s: torch.randn(s, generator=g, dtype=x0.dtype))
        kwargs = dict(generator=gen(7))
    else:
        torch.manual_seed(7)
        k, m = _first_nan_step_by_hand(x0, h, temperature, lambda s: torch.randn(s, dtype=x0.dtype))
        torch.manual_seed(7)
        kwargs = {}
    assert k > 100  # the NaN lies past the first periodic check, inside a later window
    with pytest.raises(FloatingPointError) as err:
        L.euler_maruyama(_nan_above(1.0), x0, h, 5 * k, temperature=temperature, **kwargs)
    msg = str(err.value)
    assert f"step {k}:" in msg and f"{m} of 40 particles" in msg and "grad_U" in msg, msg
    assert "reduce step_size" not in msg, msg


def test_euler_maruyama_still_blames_the_step_size_when_the_chain_diverges():
    # U = x^4 from x = 5 with h = 0.5: x = -245, 2.9e7, -5.1e22, then 4 x^3 overflows float32 at step 4
    with pytest.raises(FloatingPointError) as err:
        L.euler_maruyama(lambda z: 4 * z**3, torch.full((3, 1), 5.0), 0.5, 300, temperature=0.0)
    msg = str(err.value)
    assert "step 4:" in msg and "diverged" in msg and "reduce step_size" in msg, msg


def test_euler_maruyama_blames_the_step_size_when_the_positions_overflow():
    # U = x^2 / 2 with h = 3: x_k = (-2)^k, finite up to 2^127 in float32; step 128 overflows
    with pytest.raises(FloatingPointError) as err:
        L.euler_maruyama(lambda z: z, torch.ones(2, 1), 3.0, 300, temperature=0.0)
    msg = str(err.value)
    assert "step 128:" in msg and "reduce step_size" in msg, msg


def _mala_case(kind: str):
    """U = x^2/2 with a bug above 1.5: U NaN there, or its gradient NaN there."""

    def U(x):
        u = 0.5 * (x**2).sum(1)
        return torch.where(x[:, 0] > 1.5, torch.full_like(u, NAN), u) if kind == "U" else u

    def grad(x):
        return torch.where(x > 1.5, torch.full_like(x, NAN), x) if kind == "grad_U" else x.clone()

    return U, grad


@pytest.mark.parametrize("kind", ["U", "grad_U"])
def test_mala_refuses_nan_at_finite_proposals_instead_of_rejecting_them_silently(kind):
    U, grad = _mala_case(kind)
    x0 = torch.full((50, 1), 1.4, dtype=torch.float64)
    h = 0.01
    # the first proposals, drawn by hand with the same generator: y = x - h x + sqrt(2h) xi
    xi = torch.randn(x0.shape, generator=gen(5), dtype=x0.dtype)
    expected = int(((x0 - h * x0 + math.sqrt(2 * h) * xi)[:, 0] > 1.5).sum())
    assert expected > 0
    with pytest.raises(FloatingPointError) as err:
        L.mala(U, x0, h, 300, generator=gen(5), grad_U=grad)
    msg = str(err.value)
    assert "step 1:" in msg and f"{expected} of 50 proposals" in msg, msg
    assert ("the potential U returned NaN" if kind == "U" else "grad_U returned NaN") in msg, msg


def test_mala_still_rejects_an_infinite_potential_silently():
    # U = +inf for x < 0 is a density of zero there: rejecting those proposals is correct
    def U(x):
        u = 0.5 * (x[:, 0] - 1.0) ** 2
        return torch.where(x[:, 0] < 0, torch.full_like(u, INF), u)

    x, rate = L.mala(U, torch.full((200, 1), 0.2, dtype=torch.float64), 0.3, 200, generator=gen(2),
                     grad_U=lambda x: x - 1.0)
    assert (x >= 0).all() and 0 < rate < 1


def test_sgld_sample_blames_grad_U_for_a_nan_at_finite_positions():
    def grad(th, t):
        return th * (NAN if t == 4 else 1.0)

    with pytest.raises(FloatingPointError) as err:
        sgld_sample(grad, torch.zeros(2, 1), 0.1, 10, generator=gen(0))
    msg = str(err.value)
    assert "grad_U" in msg and "step 5" in msg and "2 of 2 chains" in msg, msg
    assert "lower lr" not in msg, msg


def test_sgld_sample_still_blames_lr_when_the_chains_diverge():
    with pytest.raises(FloatingPointError) as err:
        sgld_sample(lambda th, t: 4 * th**3, torch.full((3, 1), 5.0), 1.0, 50, temperature=0.0)
    msg = str(err.value)
    assert "step 4" in msg and "diverged" in msg and "lower lr" in msg, msg


def test_sgld_sample_refuses_chains_that_overflow_on_the_last_step():
    # theta_k = (-2)^k (lr = 6 on U = theta^2/2): the 128th and last step overflows float32
    with pytest.raises(FloatingPointError, match=r"step 128.*lower lr"):
        sgld_sample(lambda th, t: th, torch.ones(2, 1), 6.0, 128, temperature=0.0)


# ---------------------------------------------------------------------------------------------
# 6. metrics: low-precision probabilities


def _low_precision_probs(dtype, n=64, k=10, members=100):
    """An ensemble's predictive computed in ``dtype``: a running sum of the members' probabilities, then / S."""
    logits = torch.randn(members, n, k, generator=gen(11)) * 3
    total = torch.zeros(n, k, dtype=dtype)
    for s in range(members):
        total += torch.softmax(logits[s], -1).to(dtype)
    return total / members, torch.randint(0, k, (n,), generator=gen(12)), logits[0]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_metrics_accept_low_precision_probabilities(dtype):
    probs, y, _ = _low_precision_probs(dtype)
    assert (probs.double().sum(1) - 1).abs().max() > 1e-3  # the rounding is larger than the float32 tolerance
    p = probs.double().numpy()  # the exact values that were given, and NumPy formulas
    yy = y.numpy()
    rows = np.arange(len(yy))
    assert metrics.accuracy(probs, y) == pytest.approx(np.mean(p.argmax(1) == yy))
    assert metrics.nll(probs, y) == pytest.approx(-np.mean(np.log(p[rows, yy])))
    one_hot = np.eye(p.shape[1])[yy]
    assert metrics.brier_score(probs, y) == pytest.approx(np.mean(((p - one_hot) ** 2).sum(1)))
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(p > 0, p * np.log(p), 0.0).sum(1)
    np.testing.assert_allclose(metrics.predictive_entropy(probs).numpy(), entropy, rtol=1e-12)
    conf, pred = metrics.top_label_confidence(probs)
    np.testing.assert_array_equal(conf.numpy(), p.max(1))
    assert 0 <= metrics.expected_calibration_error(probs, y) <= 1


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_metrics_still_say_not_logits_for_low_precision_logits(dtype):
    _, y, logits = _low_precision_probs(dtype)
    with pytest.raises(ValueError, match="not logits"):
        metrics.nll(logits.to(dtype), y)
    with pytest.raises(ValueError, match=rf"not logits"):
        metrics.nll((logits.abs() + 1).to(dtype), y)  # non-negative, but rows sum far from one


def test_metrics_name_the_dtype_and_its_tolerance_for_rows_off_by_more_than_the_rounding():
    probs, y, _ = _low_precision_probs(torch.float32, k=4, members=1)
    off = (probs * 1.2).bfloat16()  # rows sum to 1.2: not a rounding error of bfloat16
    with pytest.raises(ValueError, match=r"bfloat16.*not logits"):
        metrics.nll(off, y)


def test_posterior_samples_refuse_a_diverged_sample():
    model = torch.nn.Linear(2, 1)
    store = PosteriorSamples(model)
    store.add()
    with torch.no_grad():
        model.weight[0, 1] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or infinite values in \['weight'\]"):
        store.add()
    assert len(store) == 1 and store.num_added == 1


def test_langevin_acceptance_refuses_a_nan_probability():
    from bdk.samplers import langevin_acceptance

    def U(x):  # NaN right of the origin
        return torch.where(x[:, 0] > 0, torch.full_like(x[:, 0], float("nan")), 0.5 * x[:, 0] ** 2)

    theta = torch.tensor([[-1.0], [5.0]])
    with pytest.raises(FloatingPointError, match="NaN for 1 of 2 chains"):
        langevin_acceptance(U, lambda x: x, theta, lr=1e-4, generator=torch.Generator().manual_seed(0))


def test_a_state_from_the_former_noise_engine_is_refused():
    """States written before SGLD drew its noise from its own generator held a "noise" entry; resuming
    one would continue the chain with other generators, so it is refused with what to do."""
    p = torch.zeros(3, requires_grad=True)
    opt = SGLD([p], lr=0.1)
    state = opt.state_dict()
    state["noise"] = {"generator": None, "streams": None}
    with pytest.raises(ValueError, match="older bdk"):
        SGLD([p], lr=0.1).load_state_dict(state)


def test_the_own_noise_generator_is_per_device_and_saved_by_device():
    p = torch.zeros(4, requires_grad=True)
    torch.manual_seed(3)
    opt = SGLD([p], lr=0.1)
    p.grad = torch.zeros(4)
    opt.step()
    state = opt.state_dict()
    assert list(state["generator"]) == ["cpu"]
    q = torch.zeros(4, requires_grad=True)
    other = SGLD([q], lr=0.1)
    other.load_state_dict(state)
    assert torch.equal(other._generator(torch.device("cpu")).get_state(), opt._generator(torch.device("cpu")).get_state())
