"""Tests of bdk.samplers (chapter 3): property tests, then statistical tests against exact answers.

Statistical tests use fixed seeds and compare with exact targets: Gaussian moments (the exact
stationary moments of the discretised chain, which tend to the posterior's as lr -> 0), the
closed-form posterior of Bayesian linear regression, the grid posterior of the Welling & Teh
mixture, and the `posteriors` package. Independent chains give independent draws, so the standard
error of a mean over C chains is sd / sqrt(C); every tolerance is derived next to its assertion.
"""

from __future__ import annotations

import copy
import math
import sys

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn
from torch.nn import functional as F

from bdk import samplers
from bdk.samplers import (
    SGLD,
    PosteriorSamples,
    RobbinsMonro,
    StackedMLP,
    convergence_diagnostics,
    langevin_acceptance,
    neg_log_posterior,
    pSGLD,
    robbins_monro,
    sgld_sample,
)

F64 = torch.float64


@pytest.fixture(autouse=True)
def _one_intra_op_thread():
    """These tests are dominated by small tensor operations: one intra-op thread is as fast on an idle
    machine and keeps their run time steady when other processes load the CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _quadratic_step(opt, theta, A, grad_noise=None):
    """Set theta.grad to the gradient of 1/2 sum_c theta_c^T A theta_c (plus optional noise) and step."""
    g = theta.detach() @ A
    if grad_noise is not None:
        g = g + grad_noise
    theta.grad = g
    opt.step()


# ------------------------------------------------------------------------------------------------
# SGLD: properties
# ------------------------------------------------------------------------------------------------


def test_temperature_zero_is_gradient_descent_with_half_the_rate():
    torch.manual_seed(0)
    p = torch.randn(5, 3, dtype=F64, requires_grad=True)
    start = p.detach().clone()
    g = torch.randn(5, 3, dtype=F64)
    opt = SGLD([p], lr=0.1, temperature=0.0)
    p.grad = g.clone()
    opt.step()
    torch.testing.assert_close(p.detach(), start - 0.05 * g, rtol=0, atol=1e-15)


def test_zero_gradient_at_zero_temperature_leaves_parameters_unchanged():
    p = torch.randn(4, dtype=F64, requires_grad=True)
    start = p.detach().clone()
    opt = SGLD([p], lr=0.3, temperature=0.0)
    for _ in range(3):
        p.grad = torch.zeros_like(p)
        opt.step()
    assert torch.equal(p.detach(), start)


def test_parameters_without_gradient_are_not_moved():
    a = torch.zeros(3, requires_grad=True)
    b = torch.zeros(3, requires_grad=True)
    opt = SGLD([a, b], lr=0.1)
    a.grad = torch.zeros(3)
    opt.step()
    assert not torch.equal(a.detach(), torch.zeros(3))  # noise was added
    assert torch.equal(b.detach(), torch.zeros(3))


def test_dtypes_and_shapes_are_kept_in_mixed_groups():
    a = torch.zeros(2, 3, dtype=torch.float32, requires_grad=True)
    b = torch.zeros(7, dtype=F64, requires_grad=True)
    opt = SGLD([a, b], lr=1e-2, generator=torch.Generator().manual_seed(0))
    a.grad, b.grad = torch.zeros_like(a), torch.zeros_like(b)
    opt.step()
    assert a.dtype == torch.float32 and b.dtype == F64
    assert a.shape == (2, 3) and b.shape == (7,)
    assert a.device.type == b.device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda():
    p = torch.zeros(1000, device="cuda", requires_grad=True)
    opt = SGLD([p], lr=1e-2, generator=torch.Generator(device="cuda").manual_seed(0))
    p.grad = torch.zeros_like(p)
    opt.step()
    assert p.device.type == "cuda" and p.detach().std().item() > 0


@pytest.mark.parametrize(
    "kwargs",
    [dict(lr=0.0), dict(lr=-1.0), dict(lr=float("nan")), dict(lr=float("inf")), dict(lr=True),
     dict(lr=0.1, temperature=-1.0), dict(lr=0.1, temperature=float("nan"))],
)
def test_sgld_argument_errors(kwargs):
    with pytest.raises(ValueError):
        SGLD([torch.zeros(2, requires_grad=True)], **kwargs)


def test_sgld_generator_must_be_a_generator():
    with pytest.raises(TypeError, match="torch.Generator"):
        SGLD([torch.zeros(2, requires_grad=True)], lr=0.1, generator=0)


def test_non_finite_gradient_stops_and_names_the_step():
    p = torch.zeros(3, requires_grad=True)
    opt = SGLD([p], lr=0.1)
    for _ in range(2):
        p.grad = torch.ones(3)
        opt.step()
    p.grad = torch.tensor([0.0, float("nan"), 1.0])
    with pytest.raises(FloatingPointError, match="step 3"):
        opt.step()


def test_non_finite_closure_loss_stops_and_names_the_step():
    p = torch.zeros(3, requires_grad=True)
    opt = SGLD([p], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (p * float("inf")).sum()
        loss.backward()
        return loss

    with pytest.raises(FloatingPointError, match="step 1"):
        opt.step(closure)


def test_same_seed_same_chain_other_seed_other_chain():
    def run(seed):
        p = torch.zeros(300_000, requires_grad=True)
        opt = SGLD([p], lr=1e-2, generator=torch.Generator().manual_seed(seed))
        for _ in range(3):
            p.grad = p.detach().clone()
            opt.step()
        return p.detach().clone()

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


def test_global_seed_controls_the_noise_without_a_generator():
    def run():
        torch.manual_seed(7)
        p = torch.zeros(10, requires_grad=True)
        opt = SGLD([p], lr=1e-2)
        p.grad = torch.zeros(10)
        opt.step()
        return p.detach().clone()

    assert torch.equal(run(), run())


def test_noise_does_not_depend_on_the_number_of_threads():
    threads = torch.get_num_threads()

    def run(n):
        torch.set_num_threads(n)
        p = torch.zeros(2**19, requires_grad=True)
        opt = SGLD([p], lr=1.0, generator=torch.Generator().manual_seed(3))
        p.grad = torch.zeros_like(p)
        opt.step()
        return p.detach().clone()

    try:
        assert torch.equal(run(1), run(2))
    finally:
        torch.set_num_threads(threads)


def test_injected_noise_has_variance_lr_times_temperature():
    n = 2**19
    p = torch.zeros(n, dtype=F64, requires_grad=True)
    lr, temperature = 0.02, 3.0
    opt = SGLD([p], lr=lr, temperature=temperature, generator=torch.Generator().manual_seed(0))
    p.grad = torch.zeros_like(p)
    opt.step()
    z = p.detach() / math.sqrt(lr * temperature)  # should be N(0, 1)
    # mean of n standard normals: SE 1/sqrt(n) = 0.0014; 5 SE = 0.007
    assert abs(z.mean().item()) < 5 / math.sqrt(n)
    # sample variance: SE sqrt(2/n) = 0.002; 5 SE = 0.0098
    assert abs(z.var().item() - 1) < 5 * math.sqrt(2 / n)
    # neighbouring halves are independent: their correlation has SE 1/sqrt(n/2)
    r = torch.corrcoef(torch.stack(z.tensor_split(2)))[0, 1].item()
    assert abs(r) < 5 / math.sqrt(n / 2)


@pytest.mark.parametrize("opt_cls", ["SGLD", "pSGLD"])
@pytest.mark.parametrize("with_generator", [True, False])
def test_state_dict_resumes_exactly(opt_cls, with_generator):
    def make(p):
        gen = torch.Generator().manual_seed(11) if with_generator else None
        if opt_cls == "SGLD":
            return SGLD([p], lr=1e-3, generator=gen)
        return pSGLD([p], lr=1e-6, num_data=100, generator=gen)

    torch.manual_seed(0)
    p = torch.randn(200_000, requires_grad=True)
    opt = make(p)

    def steps(opt, p, k):
        for _ in range(k):
            p.grad = torch.sin(p.detach())  # deterministic gradient
            opt.step()

    steps(opt, p, 3)
    saved_p, saved_state = p.detach().clone(), copy.deepcopy(opt.state_dict())  # as torch.save would
    steps(opt, p, 4)
    expected = p.detach().clone()

    torch.manual_seed(123)  # the global generator state must not matter on resume
    q = saved_p.clone().requires_grad_(True)
    opt2 = make(q)
    opt2.load_state_dict(saved_state)
    steps(opt2, q, 4)
    assert torch.equal(q.detach(), expected)
    assert opt2.num_steps == 7


# ------------------------------------------------------------------------------------------------
# pSGLD: properties
# ------------------------------------------------------------------------------------------------


def test_psgld_temperature_zero_follows_the_preconditioned_drift():
    torch.manual_seed(0)
    n_data, lr, alpha, eps = 50, 1e-3, 0.9, 1e-5
    p = torch.randn(6, dtype=F64, requires_grad=True)
    opt = pSGLD([p], lr=lr, num_data=n_data, temperature=0.0, alpha=alpha, eps=eps)
    theta = p.detach().numpy().copy()
    v = None
    for _ in range(4):
        g = np.cos(3 * theta) * 40  # some gradient of U_hat
        gbar = g / n_data
        v = gbar**2 if v is None else alpha * v + (1 - alpha) * gbar**2
        theta = theta - lr / 2 * g / (eps + np.sqrt(v))
        p.grad = torch.tensor(np.cos(3 * p.detach().numpy()) * 40)
        opt.step()
    np.testing.assert_allclose(p.detach().numpy(), theta, rtol=0, atol=1e-12)


def test_psgld_at_zero_temperature_is_rmsprop_on_the_mean_loss_after_the_first_step():
    # pSGLD's drift is RMSprop on U_hat / N with learning rate lr * N / 2, once V is initialised.
    torch.manual_seed(1)
    n_data, lr, alpha, eps = 40, 1e-3, 0.95, 1e-5
    a = torch.randn(5, dtype=F64, requires_grad=True)
    b = a.detach().clone().requires_grad_(True)
    ours = pSGLD([a], lr=lr, num_data=n_data, temperature=0.0, alpha=alpha, eps=eps)
    ref = torch.optim.RMSprop([b], lr=lr * n_data / 2, alpha=alpha, eps=eps)
    a.grad = 2 * a.detach() * n_data
    ours.step()  # initialises V with the first squared gradient; give RMSprop the same state
    ref.state[b]["step"] = torch.tensor(1.0)
    ref.state[b]["square_avg"] = ours.state[a]["square_avg"].clone()
    with torch.no_grad():
        b.copy_(a)
    for _ in range(5):
        a.grad = torch.sin(a.detach()) * n_data
        b.grad = torch.sin(b.detach())  # gradient of the mean loss
        ours.step()
        ref.step()
    torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "kwargs",
    [dict(num_data=0), dict(num_data=1.5), dict(num_data=10, alpha=1.5), dict(num_data=10, alpha=-0.1),
     dict(num_data=10, eps=0.0), dict(num_data=10, eps=-1.0), dict(num_data=10, temperature=-1.0)],
)
def test_psgld_argument_errors(kwargs):
    with pytest.raises(ValueError):
        pSGLD([torch.zeros(2, requires_grad=True)], lr=1e-3, **kwargs)


# ------------------------------------------------------------------------------------------------
# Robbins-Monro schedule
# ------------------------------------------------------------------------------------------------


def test_robbins_monro_scheduler_sets_a_b_plus_t_to_the_minus_gamma():
    p = torch.zeros(2, requires_grad=True)
    opt = SGLD([p], lr=1.0)
    sched = RobbinsMonro(opt, a=0.5, b=10.0, gamma=0.55)
    seen = []
    for _ in range(5):
        seen.append(opt.param_groups[0]["lr"])
        p.grad = torch.zeros(2)
        opt.step()
        sched.step()
    expected = [0.5 * (10 + t) ** -0.55 for t in range(5)]
    np.testing.assert_allclose(seen, expected, rtol=1e-12)
    np.testing.assert_allclose(robbins_monro(np.arange(5), 0.5, 10.0, 0.55), expected, rtol=1e-12)


def test_robbins_monro_from_range_hits_both_ends_and_matches_the_derived_constants():
    a, b = RobbinsMonro.constants(0.01, 1e-4, 1_000_000, 0.55)
    # PAPER-NUMBERS section 2 derives b ~ 231, a ~ 0.1996 for these settings.
    assert abs(b - 231) < 0.5 and abs(a - 0.1996) < 5e-4
    assert math.isclose(robbins_monro(0, a, b, 0.55), 0.01, rel_tol=1e-12)
    assert math.isclose(robbins_monro(999_999, a, b, 0.55), 1e-4, rel_tol=1e-9)


@pytest.mark.parametrize("gamma", [0.5, 0.3, 1.01, float("nan"), 0])
def test_robbins_monro_rejects_gamma_outside_the_conditions(gamma):
    opt = SGLD([torch.zeros(1, requires_grad=True)], lr=1.0)
    with pytest.raises(ValueError, match="Robbins-Monro"):
        RobbinsMonro(opt, a=1.0, b=1.0, gamma=gamma)


@pytest.mark.parametrize("kwargs", [dict(a=0.0, b=1.0), dict(a=1.0, b=0.0), dict(a=-1.0, b=1.0)])
def test_robbins_monro_rejects_non_positive_constants(kwargs):
    with pytest.raises(ValueError):
        robbins_monro(0, gamma=0.55, **kwargs)


def test_robbins_monro_from_range_argument_errors():
    with pytest.raises(ValueError):
        RobbinsMonro.constants(1e-4, 1e-2, 100, 0.55)  # increasing
    with pytest.raises(ValueError):
        RobbinsMonro.constants(1e-2, 1e-4, 1, 0.55)


# ------------------------------------------------------------------------------------------------
# neg_log_posterior
# ------------------------------------------------------------------------------------------------


def test_neg_log_posterior_classification_value():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    u = neg_log_posterior(model, x, y, num_data=80, prior_precision=2.0)
    prior = 0.5 * 2.0 * sum((p**2).sum() for p in model.parameters())
    expected = prior + 10 * F.cross_entropy(model(x), y, reduction="sum")
    torch.testing.assert_close(u, expected)


def test_neg_log_posterior_regression_value():
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    x, y = torch.randn(5, 2), torch.randn(5)
    tau = 3.0
    u = neg_log_posterior(model, x, y, 20, 0.5, likelihood="regression", noise_precision=tau)
    pred = model(x).squeeze(-1)
    loglik = (-0.5 * tau * (pred - y) ** 2 + 0.5 * math.log(tau / (2 * math.pi))).sum()
    expected = 0.25 * sum((p**2).sum() for p in model.parameters()) - 4 * loglik
    torch.testing.assert_close(u, expected)


def test_neg_log_posterior_is_unbiased_over_a_partition_of_the_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    x, y = torch.randn(30, 3, dtype=F64), torch.randint(0, 2, (30,))
    model.double()
    full = neg_log_posterior(model, x, y, 30, 1.0)
    parts = [neg_log_posterior(model, xb, yb, 30, 1.0) for xb, yb in zip(x.split(6), y.split(6))]
    torch.testing.assert_close(torch.stack(parts).mean(), full, rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize(
    "kwargs",
    [dict(num_data=4), dict(prior_precision=-1.0), dict(likelihood="poisson"),
     dict(likelihood="regression"), dict(likelihood="regression", noise_precision=0.0)],
)
def test_neg_log_posterior_argument_errors(kwargs):
    model = nn.Linear(2, 1)
    args = dict(num_data=10, prior_precision=1.0)
    args.update(kwargs)
    y = torch.randn(5) if args.get("likelihood") == "regression" else torch.zeros(5, dtype=torch.long)
    with pytest.raises(ValueError):
        neg_log_posterior(model, torch.randn(5, 2), y, **args)


def test_neg_log_posterior_rejects_mismatched_sizes():
    with pytest.raises(ValueError):
        neg_log_posterior(nn.Linear(2, 3), torch.randn(5, 2), torch.zeros(4, dtype=torch.long), 10, 1.0)


def test_chains_potential_is_the_sum_and_its_gradient_is_per_chain():
    torch.manual_seed(0)
    template = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    stacked = StackedMLP(template, 3)
    x, y = torch.randn(6, 3), torch.randint(0, 2, (6,))
    u = neg_log_posterior(stacked, x, y, 60, 0.7, chains=True)
    u.backward()
    total = 0.0
    for c in range(3):
        m = stacked.model(c)
        uc = neg_log_posterior(m, x, y, 60, 0.7)
        uc.backward()
        total = total + uc.detach()
        for name, p in m.named_parameters():
            torch.testing.assert_close(stacked.stacked_parameters()[name].grad[c], p.grad)
    torch.testing.assert_close(u.detach(), total)


# ------------------------------------------------------------------------------------------------
# sgld_sample, StackedMLP, PosteriorSamples
# ------------------------------------------------------------------------------------------------


def test_sgld_sample_shapes_burn_in_and_thinning():
    out = sgld_sample(lambda th, t: th, torch.zeros(5, 2), 0.1, num_steps=23, burn_in=3, thin=4,
                      generator=torch.Generator().manual_seed(0))
    assert out.shape == (5, 5, 2)  # (23 - 3) // 4 kept states of 5 chains
    # temperature 0 and a constant drift: the kept states are exactly the iterates after steps 7, 11, ...
    out = sgld_sample(lambda th, t: torch.ones_like(th), torch.zeros(2, 1), 0.2, 23, temperature=0.0, burn_in=3, thin=4)
    np.testing.assert_allclose(out[:, 0, 0].numpy(), [-0.1 * s for s in (7, 11, 15, 19, 23)], rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    [dict(num_steps=0), dict(burn_in=10), dict(thin=0), dict(lr=0.0), dict(temperature=-1.0)],
)
def test_sgld_sample_argument_errors(kwargs):
    args = dict(lr=0.1, num_steps=10)
    args.update(kwargs)
    with pytest.raises(ValueError):
        sgld_sample(lambda th, t: th, torch.zeros(3, 1), **args)


def test_sgld_sample_non_finite_gradient_names_the_step():
    def grad(th, t):
        return th * (float("nan") if t == 4 else 1.0)

    with pytest.raises(FloatingPointError, match="step 5"):
        sgld_sample(grad, torch.zeros(2, 1), 0.1, 10)


def test_stacked_mlp_matches_the_individual_models_for_shared_and_per_model_inputs():
    torch.manual_seed(0)
    template = nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.GELU(), nn.Dropout(0.5), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    stacked = StackedMLP(template, 4)
    x = torch.randn(7, 2, 3)
    out = stacked(x)
    assert out.shape == (4, 7, 3)
    for i in range(4):
        torch.testing.assert_close(out[i], stacked.model(i).eval()(x), rtol=1e-5, atol=1e-6)
    xs = torch.randn(4, 7, 2, 3)
    out = stacked(xs, per_model=True)
    for i in range(4):
        torch.testing.assert_close(out[i], stacked.model(i).eval()(xs[i]), rtol=1e-5, atol=1e-6)


def test_stacked_mlp_handles_no_bias_leading_and_trailing_activations_and_gradients():
    # the fast path lays activations out feature-major (S, h, n): check the layouts it switches between
    torch.manual_seed(0)
    template = nn.Sequential(nn.Tanh(), nn.Linear(3, 5, bias=False), nn.ReLU(), nn.Linear(5, 2, bias=False), nn.Sigmoid())
    stacked = StackedMLP(template, 3)
    x = torch.randn(6, 3)
    x0 = x.clone()
    with torch.no_grad():
        out = stacked(x)
    assert torch.equal(x, x0)  # the leading Tanh must not act in place on the caller's input
    assert out.shape == (3, 6, 2)
    for i in range(3):
        torch.testing.assert_close(out[i], stacked.model(i)(x), rtol=1e-5, atol=1e-6)
    # with gradients: the stacked gradient of sum_s f_s(x).sum() is each model's own gradient
    stacked(x).sum().backward()
    for i in range(3):
        m = stacked.model(i)
        m(x).sum().backward()
        for name, p in m.named_parameters():
            torch.testing.assert_close(getattr(stacked, name.replace(".", "__")).grad[i], p.grad, rtol=1e-5, atol=1e-6)


def test_fast_predictive_of_a_small_network_equals_the_loop_for_many_samples():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 10), nn.ReLU(), nn.Linear(10, 2))
    store = _filled_store(model, 40)
    x = torch.randn(300, 2)
    loop = store.forward_all(x, method="loop")
    for chunk in (None, 7, 40):
        fast = store.forward_all(x, method="fast", chunk_size=chunk)
        assert fast.is_contiguous()
        torch.testing.assert_close(fast, loop, rtol=1e-5, atol=1e-5)


def test_stacked_mlp_rejects_other_models():
    with pytest.raises(TypeError):
        StackedMLP(nn.Sequential(nn.Conv2d(1, 2, 3)), 2)
    with pytest.raises(ValueError):
        StackedMLP(nn.Sequential(nn.Linear(2, 2)), 0)


def _filled_store(model, num, **kwargs):
    store = PosteriorSamples(model, **kwargs)
    with torch.no_grad():
        for _ in range(num):
            for p in model.parameters():
                p.normal_()
            store.add()
    return store


def test_posterior_samples_burn_in_thinning_and_order():
    p = nn.Parameter(torch.zeros(1))
    model = nn.Module()
    model.w = p
    store = PosteriorSamples(model, burn_in=3, thin=2)
    for step in range(1, 11):
        with torch.no_grad():
            p.fill_(step)
        store.step()
    assert store.stacked()["w"].flatten().tolist() == [5.0, 7.0, 9.0]


def test_posterior_samples_max_samples_error_and_sliding_window():
    model = nn.Linear(1, 1, bias=False)
    store = PosteriorSamples(model, max_samples=3)
    for k in range(3):
        with torch.no_grad():
            model.weight.fill_(k)
        store.add()
    with pytest.raises(ValueError, match="max_samples"):
        store.add()
    window = PosteriorSamples(model, max_samples=3, when_full="drop_oldest")
    for k in range(7):
        with torch.no_grad():
            model.weight.fill_(k)
        window.add()
    assert window.stacked()["weight"].flatten().tolist() == [4.0, 5.0, 6.0]
    assert len(window) == 3 and window.num_added == 7


@pytest.mark.parametrize("kwargs", [dict(burn_in=-1), dict(thin=0), dict(max_samples=0), dict(when_full="ignore")])
def test_posterior_samples_argument_errors(kwargs):
    with pytest.raises(ValueError):
        PosteriorSamples(nn.Linear(2, 2), **kwargs)


def test_posterior_samples_empty_store_says_what_to_do():
    with pytest.raises(ValueError, match="burn-in"):
        PosteriorSamples(nn.Linear(2, 2)).predictive(torch.randn(3, 2))


@pytest.mark.parametrize("chunk_size", [None, 1, 3])
def test_fast_vmap_and_loop_predictives_agree(chunk_size):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 6), nn.SiLU(), nn.Linear(6, 3))
    store = _filled_store(model, 7)
    x = torch.randn(11, 2, 4)
    loop = store.forward_all(x, method="loop", chunk_size=chunk_size)
    assert loop.shape == (7, 11, 3)
    for method in ("vmap", "fast", "auto"):
        torch.testing.assert_close(store.forward_all(x, method=method, chunk_size=chunk_size), loop, rtol=1e-5, atol=1e-5)
    probs = store.predictive(x, chunk_size=chunk_size)
    torch.testing.assert_close(probs, torch.softmax(loop, -1).mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(probs.sum(-1), torch.ones(11))


def test_generic_models_use_the_vmap_path():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(1, 2, 3)
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            return self.head(torch.relu(self.conv(x.unsqueeze(1))).flatten(1))

    torch.manual_seed(0)
    store = _filled_store(Net(), 5)
    x = torch.randn(4, 6)
    torch.testing.assert_close(store.forward_all(x), store.forward_all(x, method="loop"), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="method='fast'"):
        store.forward_all(x, method="fast")


def test_regression_predictive_mean_and_variance():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    store = _filled_store(model, 6)
    x = torch.randn(9, 2, dtype=F64)
    f = store.forward_all(x, method="loop").squeeze(-1)
    mean, var = store.predictive(x, likelihood="regression", noise_precision=4.0)
    torch.testing.assert_close(mean, f.mean(0))
    torch.testing.assert_close(var, f.var(0, unbiased=False) + 0.25)
    assert mean.dtype == F64


def test_posterior_samples_state_dict_round_trip():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2))
    store = _filled_store(model, 4)
    store.num_steps = 40
    other = PosteriorSamples(model)
    other.load_state_dict(store.state_dict())
    assert other.num_steps == 40 and len(other) == 4
    x = torch.randn(5, 3)
    torch.testing.assert_close(other.forward_all(x), store.forward_all(x))


# ------------------------------------------------------------------------------------------------
# Metropolis-Hastings acceptance of a Langevin proposal
# ------------------------------------------------------------------------------------------------


def test_langevin_acceptance_matches_an_independent_formula_for_a_gaussian():
    var = 0.7
    theta = torch.linspace(-2, 2, 9, dtype=F64).unsqueeze(1)
    lr = 0.3

    def U(t):
        return (t**2).sum(-1) / (2 * var)

    def grad_U(t):
        return t / var

    a = langevin_acceptance(U, grad_U, theta, lr, generator=torch.Generator().manual_seed(5))
    xi = torch.randn(theta.shape, dtype=F64, generator=torch.Generator().manual_seed(5)).numpy()[:, 0]
    th = theta.numpy()[:, 0]
    new = th - lr / 2 * th / var + math.sqrt(lr) * xi
    log_q_fwd = -((new - th + lr / 2 * th / var) ** 2) / (2 * lr)
    log_q_rev = -((th - new + lr / 2 * new / var) ** 2) / (2 * lr)
    expected = np.minimum(1, np.exp(-new**2 / (2 * var) + th**2 / (2 * var) + log_q_rev - log_q_fwd))
    np.testing.assert_allclose(a.numpy(), expected, rtol=1e-12)
    # one "minibatch" equal to the exact gradient: the SGLD proposal is MALA's
    b = langevin_acceptance(U, grad_U, theta, lr, generator=torch.Generator().manual_seed(5),
                            minibatch_grads=lambda t: grad_U(t).unsqueeze(0))
    np.testing.assert_allclose(b.numpy(), expected, rtol=1e-12)


def test_langevin_acceptance_tends_to_one_as_the_step_shrinks():
    def U(t):
        return (t**4).sum(-1) / 4

    def grad_U(t):
        return t**3

    theta = torch.randn(2000, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    means = [langevin_acceptance(U, grad_U, theta, lr, torch.Generator().manual_seed(1)).mean().item()
             for lr in (1e-1, 1e-2, 1e-3)]
    assert means[0] < means[1] < means[2] and means[2] > 0.999


# ------------------------------------------------------------------------------------------------
# Diagnostics (arviz)
# ------------------------------------------------------------------------------------------------


def test_convergence_diagnostics_on_independent_and_on_separated_chains():
    gen = torch.Generator().manual_seed(0)
    iid = torch.randn(4, 500, 2, generator=gen)
    d = convergence_diagnostics(iid, names=["a", "b"])
    assert d["ess_bulk"].shape == (2,) and d["names"] == ["a", "b"]
    # i.i.d. draws: ESS ~ 2000 (its sampling sd is ~ 10%); R-hat within 1.01
    assert np.all(d["ess_bulk"] > 1400) and np.all(np.abs(d["r_hat"] - 1) < 0.01)
    apart = iid + torch.tensor([0.0, 0.0, 3.0, 3.0]).view(4, 1, 1)
    assert np.all(convergence_diagnostics(apart)["r_hat"] > 1.5)
    with pytest.raises(ValueError):
        convergence_diagnostics(torch.randn(10))


def test_convergence_diagnostics_explains_a_missing_arviz(monkeypatch):
    monkeypatch.setitem(sys.modules, "arviz", None)
    with pytest.raises(ImportError, match="pip install arviz"):
        convergence_diagnostics(torch.randn(2, 10))


# ------------------------------------------------------------------------------------------------
# Statistical tests against exact answers
# ------------------------------------------------------------------------------------------------

A_GAUSS = torch.tensor([[2.0, 1.2], [1.2, 1.5]], dtype=F64)  # precision; correlation of the target -0.69


def _stationary_cov(M: np.ndarray, Q: np.ndarray) -> np.ndarray:
    """Stationary covariance of theta' = M theta + noise with noise covariance Q."""
    return scipy.linalg.solve_discrete_lyapunov(M, Q)


def _se_cov(cov: np.ndarray, n: int) -> np.ndarray:
    """Standard error of sample covariances of n independent Gaussian draws: sqrt((S_ii S_jj + S_ij^2) / n)."""
    d = np.diag(cov)
    return np.sqrt((np.outer(d, d) + cov**2) / n)


@pytest.mark.parametrize("grad_noise_sd", [0.0, 2.0])
def test_sgld_matches_the_exact_stationary_gaussian_of_its_chain(grad_noise_sd):
    # U = 1/2 theta^T A theta; SGLD with h = lr/2: theta' = (I - h A) theta - h zeta + sqrt(lr) xi, with
    # gradient noise zeta ~ N(0, s^2 I). Its stationary covariance solves S = M S M^T + (lr + h^2 s^2) I;
    # as lr -> 0 it tends to A^{-1}, the target.
    num_chains, lr, num_steps = 4000, 0.05, 700  # relaxation time 1/(h lambda_min) = 80 steps
    gen = torch.Generator().manual_seed(0)
    theta = torch.full((num_chains, 2), 3.0, dtype=F64, requires_grad=True)
    opt = SGLD([theta], lr=lr, generator=torch.Generator().manual_seed(1))
    for _ in range(num_steps):
        noise = grad_noise_sd * torch.randn(num_chains, 2, dtype=F64, generator=gen)
        _quadratic_step(opt, theta, A_GAUSS, noise)
    draws = theta.detach().numpy()  # one independent draw per chain
    h = lr / 2
    M = np.eye(2) - h * A_GAUSS.numpy()
    exact = _stationary_cov(M, (lr + h**2 * grad_noise_sd**2) * np.eye(2))
    # mean 0; SE of a mean of 4000 draws = sqrt(S_ii / 4000) (about 0.02); 4 SE
    assert np.all(np.abs(draws.mean(0)) < 4 * np.sqrt(np.diag(exact) / num_chains))
    # covariance entries: SE sqrt((S_ii S_jj + S_ij^2) / n) (about 0.03); 4 SE
    assert np.all(np.abs(np.cov(draws.T) - exact) < 4 * _se_cov(exact, num_chains))
    # and the chain's own stationary law approaches the target's as lr -> 0 (discretisation bias O(lr))
    small = 1e-4
    M_small = np.eye(2) - small / 2 * A_GAUSS.numpy()
    np.testing.assert_allclose(_stationary_cov(M_small, small * np.eye(2)), np.linalg.inv(A_GAUSS.numpy()), rtol=1e-3)


def test_psgld_with_a_fixed_preconditioner_samples_exp_minus_u():
    # alpha = 1 freezes V at the first squared gradient: then G is constant, the dropped correction
    # Gamma is exactly zero, and the chain theta' = (I - h G A) theta + sqrt(lr G) xi has stationary
    # covariance S = M S M^T + lr G, which tends to A^{-1} as lr -> 0.
    num_chains, n_data, lr, num_steps = 4000, 10, 0.02, 600
    start = torch.tensor([1.0, -2.0], dtype=F64)
    theta = start.repeat(num_chains, 1).requires_grad_(True)  # same first gradient in every chain
    opt = pSGLD([theta], lr=lr, num_data=n_data, alpha=1.0, eps=1e-3, generator=torch.Generator().manual_seed(2))
    for _ in range(num_steps):
        _quadratic_step(opt, theta, A_GAUSS)
    g0 = (start @ A_GAUSS).numpy() / n_data
    G = np.diag(1 / (1e-3 + np.abs(g0)))
    h = lr / 2
    exact = _stationary_cov(np.eye(2) - h * G @ A_GAUSS.numpy(), lr * G)
    draws = theta.detach().numpy()
    # SE as in the SGLD test: 4 SE for the means and for each covariance entry
    assert np.all(np.abs(draws.mean(0)) < 4 * np.sqrt(np.diag(exact) / num_chains))
    assert np.all(np.abs(np.cov(draws.T) - exact) < 4 * _se_cov(exact, num_chains))
    # and with this fixed G the chain's stationary law tends to the target's as lr -> 0
    small = 1e-5
    np.testing.assert_allclose(_stationary_cov(np.eye(2) - small / 2 * G @ A_GAUSS.numpy(), small * G),
                               np.linalg.inv(A_GAUSS.numpy()), rtol=1e-3)


def test_bayesian_linear_regression_matches_the_closed_form_posterior():
    # y = X w + b + noise, prior N(0, 1/lambda) on (w, b), noise precision tau: the posterior is
    # N(A^{-1} tau X1^T y, A^{-1}) with A = lambda I + tau X1^T X1 (X1 = [X, 1]).
    # SGLD on minibatches (each chain picks one of 5 fixed batches of 8 per step) is a linear chain
    # theta' = M_k theta + h c_k + sqrt(lr) xi with random (M_k, c_k); its stationary mean is exactly the
    # posterior mean and its second moment solves a linear equation (computed below), which tends to
    # the posterior covariance as lr -> 0. 1000 chains run as one StackedMLP via chains=True.
    gen = torch.Generator().manual_seed(0)
    n_data, batch, lam, tau = 40, 8, 1.0, 4.0
    X = torch.randn(n_data, 2, dtype=F64, generator=gen)
    y = X @ torch.tensor([1.0, -0.5], dtype=F64) + 0.3 + torch.randn(n_data, dtype=F64, generator=gen) / math.sqrt(tau)
    X1 = torch.cat([X, torch.ones(n_data, 1, dtype=F64)], 1).numpy()
    A = lam * np.eye(3) + tau * X1.T @ X1
    post_mean = np.linalg.solve(A, tau * X1.T @ y.numpy())
    post_cov = np.linalg.inv(A)

    lr, num_chains, num_steps = 2e-4, 1000, 1000
    h = lr / 2
    batches = [np.arange(k * batch, (k + 1) * batch) for k in range(n_data // batch)]
    Ms, cs = [], []
    for idx in batches:
        Ak = lam * np.eye(3) + (n_data / batch) * tau * X1[idx].T @ X1[idx]
        Ms.append(np.eye(3) - h * Ak)
        cs.append(h * (n_data / batch) * tau * X1[idx].T @ y.numpy()[idx])
    m = np.linalg.solve(np.eye(3) - np.mean(Ms, 0), np.mean(cs, 0))
    np.testing.assert_allclose(m, post_mean, rtol=1e-10)  # the stationary mean is the posterior mean
    K = len(batches)
    lhs = np.eye(9) - sum(np.kron(Mk, Mk) for Mk in Ms) / K
    rhs = sum(np.outer(Mk @ m, ck) + np.outer(ck, Mk @ m) + np.outer(ck, ck) for Mk, ck in zip(Ms, cs)) / K + lr * np.eye(3)
    P = np.linalg.solve(lhs, rhs.reshape(-1)).reshape(3, 3)
    chain_cov = P - np.outer(m, m)
    # the minibatch chain's covariance is within 10% of the posterior's at this lr (its bias is O(lr):
    # gradient noise and discretisation)
    np.testing.assert_allclose(np.diag(chain_cov), np.diag(post_cov), rtol=0.1)

    torch.manual_seed(0)
    model = StackedMLP(nn.Sequential(nn.Linear(2, 1)), num_chains).double()
    opt = SGLD(model.parameters(), lr=lr, generator=torch.Generator().manual_seed(3))
    Xb = X.reshape(K, batch, 2)
    yb = y.reshape(K, batch)
    for _ in range(num_steps):  # relaxation time 1/(h lambda_min(A)) ~ 100 steps
        k = torch.randint(0, K, (num_chains,), generator=gen)
        opt.zero_grad()
        neg_log_posterior(model, Xb[k], yb[k], n_data, lam, "regression", tau, chains=True).backward()
        opt.step()
    p = model.stacked_parameters()
    draws = torch.cat([p["0.weight"].reshape(num_chains, 2), p["0.bias"].reshape(num_chains, 1)], 1).detach().numpy()
    # 1000 independent chains: SE of the mean sqrt(S_ii / 1000), of covariances as above; 4 SE
    assert np.all(np.abs(draws.mean(0) - post_mean) < 4 * np.sqrt(np.diag(chain_cov) / num_chains))
    assert np.all(np.abs(np.cov(draws.T) - chain_cov) < 4 * _se_cov(chain_cov, num_chains))


def test_sgld_keeps_the_welling_teh_grid_posterior_invariant():
    # Chains start at exact draws from the grid posterior and take 500 full-gradient SGLD steps with
    # lr = 2e-3 (diffusion time 0.5, several relaxation times of the slow within-mode direction). If
    # SGLD's update leaves the posterior invariant (up to the O(lr) discretisation bias, at most
    # h * lambda_max / 2 ~ 3% of a variance here, below one SE), the final
    # states are still posterior draws: moments and the mass of the mode near (0, 1) must match the
    # grid's within their standard errors. A wrong noise scale (e.g. variance 2 lr) spreads them out.
    from bdk.data import welling_teh_mixture
    from bdk.experiments.sgld import WellingTehMixture

    target = WellingTehMixture(welling_teh_mixture(100, (0.0, 1.0), seed=3))  # the chapter's data: two modes
    grid = target.grid_posterior(300)
    assert len(WellingTehMixture.grid_modes(grid)) == 2
    gen = torch.Generator().manual_seed(0)
    num_chains = 1000
    theta0 = WellingTehMixture.sample_grid(grid, num_chains, gen)
    out = sgld_sample(lambda th, t: target.grad_U(th), theta0, 2e-3, 500, burn_in=499, generator=gen)
    draws = out[-1].numpy()
    p = grid["prob"]
    t1, t2 = np.meshgrid(grid["t1"], grid["t2"], indexing="ij")
    mean = np.array([(p * t1).sum(), (p * t2).sum()])
    var = np.array([(p * (t1 - mean[0]) ** 2).sum(), (p * (t2 - mean[1]) ** 2).sum()])
    mass = p[:, grid["t2"] > 0].sum()
    # means: SE sqrt(var / 1000) (0.014 and 0.026); 4 SE
    assert np.all(np.abs(draws.mean(0) - mean) < 4 * np.sqrt(var / num_chains))
    # variances: the draws are bimodal, so use the sample fourth moment: SE sqrt((m4 - var^2) / n); 4 SE
    d = draws - draws.mean(0)
    se_var = np.sqrt(((d**4).mean(0) - d.var(0) ** 2) / num_chains)
    assert np.all(np.abs(draws.var(0) - var) < 4 * se_var)
    # mode mass: binomial SE sqrt(q (1 - q) / n) = 0.016; 4 SE
    assert abs((draws[:, 1] > 0).mean() - mass) < 4 * math.sqrt(mass * (1 - mass) / num_chains)


def test_posteriors_sgld_matches_bdk_under_the_convention_map():
    posteriors = pytest.importorskip("posteriors")  # noqa: F841
    from bdk.experiments.sgld import posteriors_crosscheck

    num_chains = 3000
    r = posteriors_crosscheck(num_data=50, lr=0.05, num_chains=num_chains, num_steps=500)
    exact = r["exact_cov"]
    se = _se_cov(exact, num_chains)
    for name in ("bdk", "posteriors"):
        # each against the exact stationary covariance of the discretised chain: 4 SE per entry
        assert np.all(np.abs(r[f"{name}_cov"] - exact) < 4 * se), name
        assert np.all(np.abs(r[f"{name}_mean"]) < 4 * np.sqrt(np.diag(exact) / num_chains)), name
    # and against each other: the difference of two independent estimates has SE sqrt(2) * se
    assert np.all(np.abs(r["bdk_cov"] - r["posteriors_cov"]) < 4 * math.sqrt(2) * se)


def test_posteriors_and_bdk_take_identical_steps_at_zero_temperature():
    pytest.importorskip("posteriors")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from posteriors.sgmcmc import sgld as post_sgld
    n_data, lr = 30, 0.01
    A = A_GAUSS
    theta = torch.tensor([[1.0, -1.0], [0.5, 2.0]], dtype=F64, requires_grad=True)
    opt = SGLD([theta], lr=lr, temperature=0.0)

    def log_post(p, batch):
        return -0.5 * ((p @ A) * p).sum() / n_data, torch.tensor([])

    transform = post_sgld.build(log_post, lr=lr * n_data / 2, temperature=0.0)
    state = transform.init(theta.detach().clone())
    for _ in range(5):
        _quadratic_step(opt, theta, A)
        state, _ = transform.update(state, None)
    torch.testing.assert_close(theta.detach(), state.params, rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------------------------------------
# experiment helpers used by the chapter and the benchmark
# ------------------------------------------------------------------------------------------------


def test_per_example_gradient_norms_and_the_covariance_trace():
    from bdk.distill import mlp
    from bdk.experiments.sgld import minibatch_gradient_covariance_trace, per_example_grad_sq_norms

    torch.manual_seed(0)
    model = mlp((5, 4, 3)).double()
    x, y = torch.randn(60, 5, dtype=F64), torch.randint(0, 3, (60,))
    sq, total = per_example_grad_sq_norms(model, x, y, chunk=25)
    params = dict(model.named_parameters())

    def loss(p, xi, yi):
        return F.cross_entropy(torch.func.functional_call(model, p, (xi[None],)), yi[None], reduction="sum")

    g = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(params, x, y)
    flat = torch.cat([g[n].reshape(60, -1) for n in params], 1)
    torch.testing.assert_close(sq, (flat**2).sum(1))
    torch.testing.assert_close(total, flat.sum(0))
    # Monte Carlo over minibatches of 6 drawn without replacement: the trace of the covariance of
    # grad U_hat = prior + 10 * sum of 6 per-example gradients. With 4000 minibatches the SE of a
    # covariance trace is at most trace * sqrt(2 / 4000) = 2.2%; 4 SE.
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([10 * flat[torch.randperm(60, generator=gen)[:6]].sum(0) for _ in range(4000)])
    mc = draws.var(0).sum().item()
    exact = minibatch_gradient_covariance_trace(model, x, y, 6)
    assert abs(mc - exact) < 4 * exact * math.sqrt(2 / 4000)


# --------------------------------------------------------------------------------------------------
# the kernels, and the optimizers that run them
# --------------------------------------------------------------------------------------------------


def test_sgld_step_is_the_equation_by_hand():
    from bdk.samplers import sgld_step

    theta = torch.tensor([1.0, 2.0], dtype=F64)
    # theta - lr/2 grad + sqrt(lr T) xi with lr = 0.5, T = 2: [1 - 1 + 1, 2 + 0.5 - 1]
    sgld_step([theta], [torch.tensor([4.0, -2.0], dtype=F64)], 0.5, 2.0, [torch.tensor([1.0, -1.0], dtype=F64)])
    assert theta.tolist() == [1.0, 1.5]
    sgld_step([theta], [torch.tensor([4.0, -2.0], dtype=F64)], 0.5, 0.0, [None])  # T = 0: no noise needed
    assert theta.tolist() == [0.0, 2.0]


def test_psgld_step_is_the_equation_by_hand():
    from bdk.samplers import psgld_step

    theta, v = torch.tensor([1.0], dtype=F64), torch.tensor([0.25], dtype=F64)
    # N = 2, alpha = 0.5, g = 2: V = 0.5 * 0.25 + 0.5 * (2/2)^2 = 0.625; 1/G = 0.01 + sqrt(0.625)
    psgld_step([theta], [torch.tensor([2.0], dtype=F64)], [v], 0.5, 2, 2.0, 0.5, 0.01, [torch.tensor([3.0], dtype=F64)])
    inv_g = 0.01 + math.sqrt(0.625)
    assert v.item() == pytest.approx(0.625, abs=1e-15)
    assert theta.item() == pytest.approx(1.0 - 0.25 * 2.0 / inv_g + 1.0 * 3.0 / math.sqrt(inv_g), abs=1e-14)


def _two_params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(3, 4, dtype=F64, generator=g).requires_grad_(), torch.randn(5, dtype=F64, generator=g).requires_grad_()]


def _grads(params, t):
    return [torch.sin(p.detach() + t) for p in params]


@pytest.mark.parametrize("opt_cls", ["SGLD", "pSGLD"])
def test_the_optimizers_are_their_kernels_under_the_same_draws(opt_cls):
    """Three steps of the optimizer equal three kernel calls with xi drawn by one normal_ of all 17
    weights from the same seed, in parameter order (the optimizer's one-draw-per-step fast path)."""
    from bdk.samplers import psgld_step, sgld_step

    lr, temperature, num_data, alpha, eps = 1e-2, 0.7, 50, 0.9, 1e-3
    params = _two_params()
    if opt_cls == "SGLD":
        opt = SGLD(params, lr=lr, temperature=temperature, generator=torch.Generator().manual_seed(5))
    else:
        opt = pSGLD(params, lr=lr, num_data=num_data, temperature=temperature, alpha=alpha, eps=eps,
                    generator=torch.Generator().manual_seed(5))
    theta = [p.detach().clone() for p in params]
    square_avgs = [(g / num_data).square() for g in _grads(theta, 0)]
    gen = torch.Generator().manual_seed(5)
    for t in range(3):
        grads_opt, grads_ref = _grads(params, t), _grads(theta, t)
        for p, g in zip(params, grads_opt):
            p.grad = g
        opt.step()
        xi = torch.empty(17, dtype=F64).normal_(generator=gen)
        noise = [xi[:12].view(3, 4), xi[12:]]
        if opt_cls == "SGLD":
            sgld_step(theta, grads_ref, lr, temperature, noise)
        else:
            psgld_step(theta, grads_ref, square_avgs, lr, num_data, temperature, alpha, eps, noise)
    for p, ref in zip(params, theta):
        assert torch.equal(p.detach(), ref)


def test_sgld_at_temperature_zero_is_sgd_at_half_the_rate():
    a, b = _two_params(), _two_params()
    sgld, sgd = SGLD(a, lr=0.2, temperature=0.0), torch.optim.SGD(b, lr=0.1)
    for t in range(3):
        for p, q, g in zip(a, b, _grads(a, t)):
            p.grad, q.grad = g, g.clone()
        sgld.step()
        sgd.step()
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-15)


def test_sgld_sample_is_the_kernel_on_the_chain_driver():
    """sgld_sample against a plain loop of sgld_step with the same per-step draws (one normal_ of the
    whole (C, d) state per step): the kept states are identical, and they are the states after steps
    burn_in + thin, burn_in + 2 thin, ..."""
    from bdk.samplers import sgld_step

    theta0 = torch.randn(5, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    lr = lambda t: 0.1 / (1 + t)  # noqa: E731
    grad = lambda th, t: th * (1 + 0.1 * t)  # noqa: E731
    kept = sgld_sample(grad, theta0, lr, 20, temperature=0.5, burn_in=4, thin=3,
                       generator=torch.Generator().manual_seed(9))
    gen, theta, expected = torch.Generator().manual_seed(9), theta0.clone(), []
    for t in range(20):
        sgld_step([theta], [grad(theta, t)], lr(t), 0.5, [torch.empty_like(theta).normal_(generator=gen)])
        if t + 1 > 4 and (t + 1 - 4) % 3 == 0:
            expected.append(theta.clone())
    assert kept.shape == (5, 5, 3)
    assert torch.equal(kept, torch.stack(expected))
