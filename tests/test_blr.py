"""Tests of bdk.blr (chapter 4, the Bayesian learning rule).

Two layers: property tests (argument errors, shapes, dtypes, determinism under a seed, fixed points)
and exact tests. The exact tests compare the BLR code path with classical algorithms written here,
independently (NumPy loops with closed-form derivatives, or autograd), with torch.optim.RMSprop/Adam
where the mapping is exact, and with closed-form posteriors. They run in float64, where two
implementations of the same arithmetic agree to ~1e-15; the bar is 1e-6 (the chapter's claim), and the
comments give the measured agreement. Statistical tests give the standard error behind every
tolerance.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from bdk import blr
from bdk.blr import GaussianBLR

DTYPE = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def _toy_logistic(seed=0, n=20, prior_precision=0.25):
    """A seeded, overlapping two-class set in 2-D (no bias), float64."""
    rng = np.random.default_rng(seed)
    y = np.repeat([0.0, 1.0], n // 2)
    x = rng.normal(size=(n, 2)) * 0.9 + np.where(y[:, None] == 1, 1.0, -1.0) * np.array([1.0, -0.6])
    xt, yt = torch.tensor(x, dtype=DTYPE), torch.tensor(y, dtype=DTYPE)
    return x, y, blr.LogisticRegressionPotential(xt, yt, prior_precision=prior_precision)


def _np_grad_hess(x, y, lam):
    def grad(theta):
        p = 1 / (1 + np.exp(-x @ theta))
        return x.T @ (p - y) + lam * theta

    def hess(theta):
        p = 1 / (1 + np.exp(-x @ theta))
        return x.T @ (x * (p * (1 - p))[:, None]) + lam * np.eye(x.shape[1])

    return grad, hess


# ------------------------------------------------------------------------------------------------
# GaussianBLR: properties
# ------------------------------------------------------------------------------------------------


def test_state_validation_errors():
    m = torch.zeros(2, dtype=DTYPE)
    with pytest.raises(ValueError, match="shape"):
        GaussianBLR(m, torch.eye(3, dtype=DTYPE))
    with pytest.raises(ValueError, match="positive definite"):
        GaussianBLR(m, torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=DTYPE))
    with pytest.raises(ValueError, match="symmetric"):
        GaussianBLR(m, torch.tensor([[1.0, 0.5], [0.0, 1.0]], dtype=DTYPE))
    with pytest.raises(ValueError, match="positive"):
        GaussianBLR(m, torch.tensor([1.0, 0.0], dtype=DTYPE))
    with pytest.raises(TypeError, match="dtype"):
        GaussianBLR(m, torch.eye(2, dtype=torch.float32))
    with pytest.raises(TypeError, match="floating"):
        GaussianBLR(torch.zeros(2, dtype=torch.int64), torch.eye(2, dtype=DTYPE))
    with pytest.raises(ValueError, match="finite"):
        GaussianBLR(torch.tensor([0.0, float("nan")], dtype=DTYPE), torch.eye(2, dtype=DTYPE))
    with pytest.raises(ValueError, match="vector"):
        GaussianBLR(torch.zeros(1, 2, dtype=DTYPE), torch.eye(2, dtype=DTYPE))


def test_natural_and_expectation_parameters_round_trip():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(3, 3, generator=gen, dtype=DTYPE)
    state = GaussianBLR(torch.randn(3, generator=gen, dtype=DTYPE), a @ a.T + torch.eye(3, dtype=DTYPE))
    eta1, eta2 = state.natural_parameters()
    back = GaussianBLR.from_natural(eta1, eta2)
    assert torch.allclose(back.mean, state.mean, atol=1e-12) and torch.allclose(back.precision, state.precision)
    mu1, mu2 = state.expectation_parameters()
    assert torch.allclose(mu2, torch.linalg.inv(state.precision) + torch.outer(state.mean, state.mean), atol=1e-12)
    diag = GaussianBLR(torch.tensor([1.0, -2.0], dtype=DTYPE), torch.tensor([2.0, 0.5], dtype=DTYPE))
    e1, e2 = diag.natural_parameters()
    assert torch.allclose(GaussianBLR.from_natural(e1, e2).mean, diag.mean)
    assert torch.allclose(diag.expectation_parameters()[1], torch.tensor([0.5 + 1.0, 2.0 + 4.0], dtype=DTYPE))


def test_log_prob_and_entropy_match_torch_distributions():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(3, 3, generator=gen, dtype=DTYPE)
    prec = a @ a.T + torch.eye(3, dtype=DTYPE)
    state = GaussianBLR(torch.randn(3, generator=gen, dtype=DTYPE), prec)
    ref = torch.distributions.MultivariateNormal(state.mean, precision_matrix=prec)
    theta = torch.randn(5, 3, generator=gen, dtype=DTYPE)
    assert torch.allclose(state.log_prob(theta), ref.log_prob(theta), atol=1e-12)
    assert torch.allclose(state.entropy(), ref.entropy(), atol=1e-12)
    diag = GaussianBLR(state.mean, prec.diagonal())
    ref_diag = torch.distributions.Normal(state.mean, prec.diagonal().rsqrt())
    assert torch.allclose(diag.log_prob(theta), ref_diag.log_prob(theta).sum(-1), atol=1e-12)


def test_sample_shapes_dtypes_determinism_and_moments():
    prec = torch.tensor([[2.0, 0.6], [0.6, 1.0]], dtype=DTYPE)
    state = GaussianBLR(torch.tensor([1.0, -1.0], dtype=DTYPE), prec)
    a = state.sample(4000, generator=torch.Generator().manual_seed(3))
    b = state.sample(4000, generator=torch.Generator().manual_seed(3))
    c = state.sample(4000, generator=torch.Generator().manual_seed(4))
    assert a.shape == (4000, 2) and a.dtype == DTYPE
    assert torch.equal(a, b) and not torch.equal(a, c)
    cov = torch.linalg.inv(prec)
    # SE of each coordinate's mean of 4000 draws: sqrt(var / 4000) <= sqrt(1.23 / 4000) = 0.018; 4 SE = 0.07
    se = (cov.diagonal() / 4000).sqrt()
    assert ((a.mean(0) - state.mean).abs() < 4 * se).all()
    # SE of a sample variance is ~ var * sqrt(2 / 4000) = 0.022 var; 4 SE = 9% of the variance
    assert ((a.var(0) - cov.diagonal()).abs() < 4 * cov.diagonal() * math.sqrt(2 / 4000)).all()
    f32 = GaussianBLR(torch.zeros(3), torch.ones(3))
    assert f32.sample(2).dtype == torch.float32
    with pytest.raises(ValueError, match="num_samples"):
        state.sample(0)


# ------------------------------------------------------------------------------------------------
# blr_step: properties
# ------------------------------------------------------------------------------------------------


def _quadratic(center, hess):
    def grad_fn(theta):
        return (theta - center) @ hess.T

    def hess_fn(theta):
        return hess.expand(theta.shape[0], -1, -1)

    return grad_fn, hess_fn


def test_blr_step_argument_errors():
    state = GaussianBLR(torch.zeros(2, dtype=DTYPE), torch.eye(2, dtype=DTYPE))
    g, h = _quadratic(torch.zeros(2, dtype=DTYPE), torch.eye(2, dtype=DTYPE))
    with pytest.raises(ValueError, match="lr"):
        blr.blr_step(state, g, h, lr=0.0)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        blr.blr_step(state, g, h, lr=1.5)
    with pytest.raises(ValueError, match="hess_fn is required"):
        blr.blr_step(state, g, lr=0.5)
    with pytest.raises(ValueError, match="method"):
        blr.blr_step(state, g, h, lr=0.5, method="laplace")
    with pytest.raises(ValueError, match="num_samples"):
        blr.blr_step(state, g, h, lr=0.5, method="mc", num_samples=0)
    with pytest.raises(ValueError, match="grad_fn"):
        blr.blr_step(state, lambda t: t[0], h, lr=0.5)
    with pytest.raises(ValueError, match="hess_fn"):
        blr.blr_step(state, g, lambda t: t, lr=0.5)  # (k, d) is only allowed for a diagonal state
    with pytest.raises(ValueError, match="reparam"):
        blr.blr_step(state, g, "reparam", lr=0.5)  # needs method="mc"
    with pytest.raises(ValueError, match="prior_precision"):
        blr.blr_step(state, g, h, lr=0.5, prior_precision=-1.0)
    with pytest.raises(FloatingPointError, match="NaN"):
        blr.blr_step(state, lambda t: t * float("nan"), h, lr=0.5)
    # an indefinite Hessian estimate that makes the new precision indefinite is an error, not clipped
    with pytest.raises(ValueError, match="positive definite"):
        blr.blr_step(state, g, lambda t: -3 * torch.eye(2, dtype=DTYPE).expand(t.shape[0], -1, -1), lr=0.5)
    # a larger rate is fine when the precision is fixed (gradient descent)
    blr.blr_step(state, g, lr=1.5, update_precision=False)


def test_run_blr_names_the_failing_step():
    state = GaussianBLR(torch.zeros(2, dtype=DTYPE), torch.eye(2, dtype=DTYPE))
    calls = {"n": 0}

    def grad_fn(theta):
        calls["n"] += 1
        return theta * (float("nan") if calls["n"] == 3 else 1.0)

    with pytest.raises(FloatingPointError, match="BLR step 2"):
        blr.run_blr(state, grad_fn, lr=0.1, num_steps=5, update_precision=False)


def test_fixed_point_and_direction():
    # at the minimum of a quadratic with S equal to its Hessian, a step changes nothing
    hess = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=DTYPE)
    center = torch.tensor([1.0, -1.0], dtype=DTYPE)
    g, h = _quadratic(center, hess)
    state = GaussianBLR(center.clone(), hess.clone())
    new = blr.blr_step(state, g, h, lr=0.3)
    assert torch.equal(new.mean, state.mean) and torch.allclose(new.precision, state.precision, atol=1e-15)
    # a positive gradient moves the mean down (diagonal state, fixed precision)
    diag = GaussianBLR(torch.zeros(2, dtype=DTYPE), torch.ones(2, dtype=DTYPE))
    moved = blr.blr_step(diag, lambda t: torch.ones_like(t), lr=0.1, update_precision=False)
    assert (moved.mean < 0).all()


def test_shapes_and_dtypes_are_kept():
    for dtype in (torch.float32, torch.float64):
        for prec in (torch.eye(3, dtype=dtype), torch.ones(3, dtype=dtype)):
            state = GaussianBLR(torch.zeros(3, dtype=dtype), prec)
            g, h = _quadratic(torch.ones(3, dtype=dtype), torch.eye(3, dtype=dtype))
            for method in ("delta", "mc"):
                new = blr.blr_step(state, g, h, lr=0.5, method=method, num_samples=3,
                                   generator=torch.Generator().manual_seed(0))
                assert new.mean.dtype == dtype and new.precision.shape == prec.shape
            # a diagonal state also accepts Hessian diagonals (k, d)
            if prec.ndim == 1:
                new = blr.blr_step(state, g, lambda t: torch.ones_like(t), lr=0.5)
                assert new.precision.shape == (3,)


def test_von_is_deterministic_under_a_seed():
    _, _, pot = _toy_logistic()
    state = GaussianBLR(torch.zeros(2, dtype=DTYPE), torch.eye(2, dtype=DTYPE))

    def run(seed):
        s, _ = blr.run_blr(state, pot.grad_U, pot.hess_U, lr=0.2, num_steps=10, method="mc", num_samples=2,
                           generator=torch.Generator().manual_seed(seed))
        return s

    a, b, c = run(5), run(5), run(6)
    assert torch.equal(a.mean, b.mean) and torch.equal(a.precision, b.precision)
    assert not torch.equal(a.mean, c.mean)


# ------------------------------------------------------------------------------------------------
# Special cases, exactly (float64): the BLR code path against classical algorithms written here
# ------------------------------------------------------------------------------------------------


def test_gradient_descent_is_blr_with_fixed_precision_and_delta_method():
    x, y, pot = _toy_logistic()
    grad, _ = _np_grad_hess(x, y, pot.prior_precision)
    lr, steps = 0.05, 50
    theta = np.array([-0.5, 0.5])
    ours = [theta.copy()]
    for _ in range(steps):
        theta = theta - lr * grad(theta)
        ours.append(theta.copy())
    start = GaussianBLR(torch.tensor([-0.5, 0.5], dtype=DTYPE), torch.eye(2, dtype=DTYPE))
    _, traj = blr.run_blr(start, pot.grad_U, lr=lr, num_steps=steps, update_precision=False)
    # measured: ~2e-16
    assert np.abs(traj["mean"].numpy() - np.array(ours)).max() < 1e-6
    assert np.abs(traj["mean"][-1].numpy() - traj["mean"][0].numpy()).max() > 0.5  # it moved


def test_newton_is_blr_with_full_precision_delta_method_unit_rate():
    x, y, pot = _toy_logistic()
    lam = pot.prior_precision
    xt, yt = torch.tensor(x), torch.tensor(y)

    def loss(theta):  # autograd derivatives: independent of the closed forms in bdk.blr
        z = xt @ theta
        return (torch.nn.functional.softplus(z) - yt * z).sum() + 0.5 * lam * theta @ theta

    theta = torch.tensor([-0.5, 0.5], dtype=DTYPE)
    ours = [theta]
    for _ in range(8):
        g = torch.func.grad(loss)(theta)
        h = torch.func.hessian(loss)(theta)
        theta = theta - torch.linalg.solve(h, g)
        ours.append(theta)
    start = GaussianBLR(torch.tensor([-0.5, 0.5], dtype=DTYPE), torch.eye(2, dtype=DTYPE))
    _, traj = blr.run_blr(start, pot.grad_U, pot.hess_U, lr=1.0, num_steps=8)
    # measured: ~4e-16
    assert (traj["mean"] - torch.stack(ours)).abs().max() < 1e-6
    assert torch.func.grad(loss)(traj["mean"][-1]).abs().max() < 1e-10  # converged to the mode


def _adaptive_vs_torch(name, steps=200, **hyper):
    _, _, pot = _toy_logistic()
    n = pot.num_data
    gen = torch.Generator().manual_seed(0)
    batches = torch.stack([torch.randperm(n, generator=gen)[:5] for _ in range(steps)])
    theta0 = torch.tensor([-0.5, 0.5], dtype=DTYPE)
    param = torch.nn.Parameter(theta0.clone())
    if name == "RMSprop":
        opt = torch.optim.RMSprop([param], lr=hyper["lr"], alpha=hyper["beta2"], eps=hyper["eps"])
    else:
        opt = torch.optim.Adam([param], lr=hyper["lr"], betas=(hyper["beta1"], hyper["beta2"]), eps=hyper["eps"])
    state = blr.AdaptiveState.init(theta0)
    worst = 0.0
    for idx in batches:
        opt.zero_grad()
        (pot.U(param, batch=idx) / n).backward()
        opt.step()
        g = pot.grad_U(state.mean, batch=idx) / n
        state = blr.adaptive_blr_step(state, g, sqrt=True, debias=name == "Adam", **hyper)
        worst = max(worst, float((state.mean - param.detach()).abs().max()))
    return worst, state


def test_rmsprop_is_the_diagonal_blr_with_squared_gradients_and_a_square_root():
    worst, state = _adaptive_vs_torch("RMSprop", lr=0.02, beta2=0.99, eps=1e-8)
    assert worst < 1e-6  # measured: ~4e-16
    assert state.step == 200


def test_adam_is_the_diagonal_blr_with_square_root_momentum_and_debiasing():
    worst, _ = _adaptive_vs_torch("Adam", lr=0.05, beta1=0.9, beta2=0.999, eps=1e-8)
    assert worst < 1e-6  # measured: ~3e-16


def test_without_the_square_root_it_is_not_adam():
    # the test above can fail: dropping the square root changes the iterates by O(1)
    _, _, pot = _toy_logistic()
    state_a = state_b = blr.AdaptiveState.init(torch.tensor([-0.5, 0.5], dtype=DTYPE))
    for _ in range(50):
        g = pot.grad_U(state_a.mean) / pot.num_data
        state_a = blr.adaptive_blr_step(state_a, g, lr=0.05, beta1=0.9, beta2=0.999, sqrt=True, eps=1e-8, debias=True)
        g = pot.grad_U(state_b.mean) / pot.num_data
        state_b = blr.adaptive_blr_step(state_b, g, lr=0.05, beta1=0.9, beta2=0.999, sqrt=False, eps=1e-8, debias=True)
    assert (state_a.mean - state_b.mean).abs().max() > 1e-2


def test_adaptive_argument_errors_and_zero_precision():
    state = blr.AdaptiveState.init(torch.zeros(2, dtype=DTYPE))
    g = torch.ones(2, dtype=DTYPE)
    with pytest.raises(ValueError, match="beta2"):
        blr.adaptive_blr_step(state, g, lr=0.1, beta2=1.0)
    with pytest.raises(ValueError, match="beta1"):
        blr.adaptive_blr_step(state, g, lr=0.1, beta2=0.9, beta1=-0.1)
    with pytest.raises(ValueError, match="eps"):
        blr.adaptive_blr_step(state, g, lr=0.1, beta2=0.9, eps=-1.0)
    with pytest.raises(ValueError, match="shape"):
        blr.adaptive_blr_step(state, torch.ones(3, dtype=DTYPE), lr=0.1, beta2=0.9)
    with pytest.raises(ValueError, match="non-negative"):
        blr.AdaptiveState(torch.zeros(2), -torch.ones(2), torch.zeros(2))
    # zero precision, zero gradient, no eps: 0/0 is reported, not replaced
    with pytest.raises(FloatingPointError, match="step 1"):
        blr.adaptive_blr_step(state, torch.zeros(2, dtype=DTYPE), lr=0.1, beta2=0.9)


def test_von_is_khan_et_al_2018_per_example_form():
    """VON as written by Khan et al. (2018): per-example scale, prior in closed form, same draws."""
    x, y, pot = _toy_logistic()
    n, d, lam, rho, k, steps = 20, 2, pot.prior_precision, 0.2, 4, 40
    lt = lam / n
    gen = torch.Generator().manual_seed(11)
    mu, s_tilde = np.array([-0.5, 0.5]), np.eye(d) / n - lt * np.eye(d)
    means, precs = [mu], [n * (s_tilde + lt * np.eye(d))]
    for _ in range(steps):
        eps = torch.randn((k, d), generator=gen, dtype=DTYPE).numpy()
        chol = np.linalg.cholesky(n * (s_tilde + lt * np.eye(d)))
        theta = mu + scipy.linalg.solve_triangular(chol.T, eps.T, lower=False).T
        p = 1 / (1 + np.exp(-theta @ x.T))
        g = ((p - y) @ x / n).mean(0)
        h = np.einsum("kn,ni,nj->ij", p * (1 - p), x, x) / n / k
        s_tilde = (1 - rho) * s_tilde + rho * h
        mu = mu - rho * np.linalg.solve(s_tilde + lt * np.eye(d), g + lt * mu)
        means.append(mu)
        precs.append(n * (s_tilde + lt * np.eye(d)))
    lik = blr.LogisticRegressionPotential(pot.x, pot.y, prior_precision=0.0)
    start = GaussianBLR(torch.tensor([-0.5, 0.5], dtype=DTYPE), torch.eye(d, dtype=DTYPE))
    _, traj = blr.run_blr(start, lik.grad_U, lik.hess_U, lr=rho, num_steps=steps, method="mc", num_samples=k,
                          generator=torch.Generator().manual_seed(11), prior_precision=lam)
    # measured: ~1e-15 for both
    assert np.abs(traj["mean"].numpy() - np.array(means)).max() < 1e-6
    assert np.abs(traj["precision"].numpy() - np.array(precs)).max() < 1e-6


def test_prior_in_closed_form_equals_prior_in_the_loss_for_the_delta_method():
    _, _, pot = _toy_logistic()
    lik = blr.LogisticRegressionPotential(pot.x, pot.y, prior_precision=0.0)
    state = GaussianBLR(torch.tensor([0.3, -0.2], dtype=DTYPE), torch.eye(2, dtype=DTYPE))
    a = blr.blr_step(state, pot.grad_U, pot.hess_U, lr=0.5)
    b = blr.blr_step(state, lik.grad_U, lik.hess_U, lr=0.5, prior_precision=pot.prior_precision)
    assert torch.allclose(a.mean, b.mean, atol=1e-14) and torch.allclose(a.precision, b.precision, atol=1e-14)


# ------------------------------------------------------------------------------------------------
# Conjugate computation
# ------------------------------------------------------------------------------------------------


def _linear_regression(seed=0, n=30, d=3, tau=2.0, lam=0.5):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = x @ rng.normal(size=d) + rng.normal(size=n) / math.sqrt(tau)
    # closed form, written here: Lambda = tau X^T X + lam I, mean = Lambda^-1 tau X^T y
    post_prec = tau * x.T @ x + lam * np.eye(d)
    post_mean = np.linalg.solve(post_prec, tau * x.T @ y)
    pot = blr.LinearRegressionPotential(torch.tensor(x), torch.tensor(y), noise_precision=tau, prior_precision=lam)
    return pot, post_mean, post_prec


@pytest.mark.parametrize("method", ["delta", "quadrature"])
def test_one_blr_step_with_unit_rate_is_the_exact_posterior(method):
    pot, post_mean, post_prec = _linear_regression()
    gen = torch.Generator().manual_seed(2)
    a = torch.randn(3, 3, generator=gen, dtype=DTYPE)
    start = GaussianBLR(5 * torch.randn(3, generator=gen, dtype=DTYPE), a @ a.T + torch.eye(3, dtype=DTYPE))
    one = blr.blr_step(start, pot.grad_U, pot.hess_U, lr=1.0, method=method, quadrature_points=5)
    # measured: ~1e-14 (the posterior mean has entries of order 1, the precision of order 50)
    assert np.abs(one.mean.numpy() - post_mean).max() < 1e-6
    assert np.abs(one.precision.numpy() - post_prec).max() < 1e-6
    exact = pot.posterior()
    assert np.abs(exact.mean.numpy() - post_mean).max() < 1e-10


def test_conjugate_natural_parameters_approach_geometrically():
    # lambda_t - lambda_* = (1 - rho)^t (lambda_0 - lambda_*) exactly, for both natural parameters
    pot, post_mean, post_prec = _linear_regression(seed=1)
    start = GaussianBLR(torch.zeros(3, dtype=DTYPE), torch.eye(3, dtype=DTYPE))
    rho = 0.3
    _, traj = blr.run_blr(start, pot.grad_U, pot.hess_U, lr=rho, num_steps=15)
    eta_star = np.concatenate([post_prec @ post_mean, post_prec.ravel()])
    eta = [np.concatenate([(p @ m).numpy(), p.numpy().ravel()]) for m, p in zip(traj["mean"], traj["precision"])]
    for t, e in enumerate(eta):
        assert np.abs((e - eta_star) - (1 - rho) ** t * (eta[0] - eta_star)).max() < 1e-9


@pytest.mark.slow
def test_von_on_the_conjugate_model_has_the_exact_ar1_stationary_law():
    """With a constant Hessian, VON's precision is deterministic and its mean an AR(1) process.

    With S = Lambda (from the start), m_{t+1} - mu = (1 - rho)(m_t - mu) - rho L^-T eps_bar, so the
    stationary law is N(mu, rho / ((2 - rho) K) Lambda^-1). The average of T iterates of an AR(1)
    with coefficient a = 1 - rho has variance ~ sigma_stat^2 (1 + a) / ((1 - a) T).
    """
    pot, post_mean, post_prec = _linear_regression(seed=2)
    rho, k, steps, burn = 0.2, 2, 6000, 200
    start = GaussianBLR(torch.tensor(post_mean) + 1.0, torch.tensor(post_prec))
    _, traj = blr.run_blr(start, pot.grad_U, pot.hess_U, lr=rho, num_steps=steps, method="mc", num_samples=k,
                          generator=torch.Generator().manual_seed(0))
    assert (traj["precision"] - torch.tensor(post_prec)).abs().max() < 1e-9  # deterministic
    tail = traj["mean"][burn:].numpy()
    cov = np.linalg.inv(post_prec)
    stat_var = rho / ((2 - rho) * k) * np.diag(cov)
    a = 1 - rho
    se = np.sqrt(stat_var * (1 + a) / ((1 - a) * tail.shape[0]))
    assert (np.abs(tail.mean(0) - post_mean) < 4 * se).all()
    # the stationary variance itself: the SE of a variance from T_eff = T (1 - a^2)/(1 + a^2) nearly
    # independent draws is ~ var * sqrt(2 / T_eff); 4 SE
    t_eff = tail.shape[0] * (1 - a**2) / (1 + a**2)
    assert (np.abs(tail.var(0) - stat_var) < 4 * stat_var * np.sqrt(2 / t_eff)).all()


# ------------------------------------------------------------------------------------------------
# References: Laplace, the Gaussian VI optimum, autograd derivatives, the Stein Hessian estimate
# ------------------------------------------------------------------------------------------------


def test_closed_form_derivatives_match_autograd():
    _, _, pot = _toy_logistic()
    grad_fn, hess_fn = blr.grad_hess_from_loss(lambda t: pot.U(t))
    theta = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=DTYPE)
    assert torch.allclose(grad_fn(theta), pot.grad_U(theta), atol=1e-12)
    assert torch.allclose(hess_fn(theta), pot.hess_U(theta), atol=1e-12)
    idx = torch.tensor([0, 3, 7, 12])
    g_b = torch.func.grad(lambda t: pot.U(t, batch=idx))(theta[0])
    assert torch.allclose(g_b, pot.grad_U(theta[0], batch=idx), atol=1e-12)
    # the minibatch estimate is unbiased: averaging over a partition into batches gives U
    parts = torch.arange(20).reshape(4, 5)
    assert torch.allclose(torch.stack([pot.U(theta, batch=p) for p in parts]).mean(0), pot.U(theta), atol=1e-12)


def test_regression_potentials_are_langevin_potentials_batched_over_the_leading_dimension():
    """Both regression potentials implement bdk.langevin.Potential: U (k,) and grad_U (k, d) on a batch (k, d),
    equal row by row to the single-point values, and grad_U equal to the interface's autograd default."""
    from bdk.langevin import Potential

    _, _, logistic = _toy_logistic()
    rng = torch.Generator().manual_seed(1)
    x = torch.randn(15, 3, generator=rng, dtype=DTYPE)
    linear = blr.LinearRegressionPotential(x, x @ torch.tensor([1.0, -2.0, 0.5], dtype=DTYPE), 2.0, 0.5)
    for pot in (logistic, linear):
        assert isinstance(pot, Potential)
        theta = torch.randn(6, pot.dim, generator=rng, dtype=DTYPE)
        u, g = pot.U(theta), pot.grad_U(theta)
        assert u.shape == (6,) and g.shape == (6, pot.dim) and torch.equal(pot(theta), u)
        for i in range(6):
            assert torch.allclose(pot.U(theta[i]), u[i], rtol=1e-14, atol=0)
            assert torch.allclose(pot.grad_U(theta[i]), g[i], rtol=1e-14, atol=1e-14)
        assert torch.allclose(Potential.grad_U(pot, theta), g, rtol=1e-12, atol=1e-12)  # autograd of U


@pytest.mark.parametrize("hess_approx", ["reparam", "gradient_magnitude"])
def test_von_optimizer_equals_the_von_step_kernel_with_several_draws(hess_approx):
    """The VON optimizer (average loss, h-parametrisation, K sampled_params blocks per step) and the
    von_step kernel (summed loss, precision S = N (h + delta), K draws at once) are the same update
    under the same draws, to rounding. gradient_magnitude is hess_fn = (grad U_lik)^2 / N in the kernel."""
    pot, model = _module_problem()
    n, lam, rho, h0, k, steps = pot.num_data, pot.prior_precision, 0.2, 0.3, 3, 40
    opt = blr.VON(model.parameters(), lr=rho, ess=n, hess_init=h0, weight_decay=lam / n, hess_approx=hess_approx,
                  generator=torch.Generator().manual_seed(4))
    lik = blr.LogisticRegressionPotential(pot.x, pot.y, prior_precision=0.0)
    hess_fn = "reparam" if hess_approx == "reparam" else (lambda t: lik.grad_U(t) ** 2 / n)
    state = GaussianBLR(torch.tensor([-0.5, 0.5], dtype=DTYPE), torch.full((2,), n * (h0 + lam / n), dtype=DTYPE))
    gen = torch.Generator().manual_seed(4)
    for _ in range(steps):
        for _ in range(k):
            with opt.sampled_params(train=True):
                _loss(model, pot).backward()
        opt.step()
        state = blr.von_step(state, lik.grad_U, hess_fn, lr=rho, num_samples=k, generator=gen, prior_precision=lam)
        assert (model.weight.detach()[0] - state.mean).abs().max() < 1e-12  # measured: ~1e-16
        prec = opt.posterior_std()[0][0] ** -2
        assert ((prec - state.precision) / state.precision).abs().max() < 1e-12


def test_von_step_is_the_equation_in_its_docstring():
    """von_step against the equation written out here with the same draws, full and diagonal precision."""
    _, _, pot = _toy_logistic()
    lik = blr.LogisticRegressionPotential(pot.x, pot.y, prior_precision=0.0)
    lam, rho, k = pot.prior_precision, 0.3, 4
    for diagonal in (False, True):
        m = torch.tensor([0.2, -0.1], dtype=DTYPE)
        s = torch.tensor([[3.0, 0.5], [0.5, 2.0]], dtype=DTYPE)
        s = torch.diag(s.diagonal()) if diagonal else s
        state = GaussianBLR(m, s.diagonal().clone() if diagonal else s)
        new = blr.von_step(state, lik.grad_U, lik.hess_U, lr=rho, num_samples=k,
                           generator=torch.Generator().manual_seed(2), prior_precision=lam)
        eps = torch.randn((k, 2), generator=torch.Generator().manual_seed(2), dtype=DTYPE)
        theta = m + torch.linalg.solve(torch.linalg.cholesky(s).T, eps.T).T  # m + L^-T eps
        g_hat = lik.grad_U(theta).mean(0) + lam * m
        h_hat = lik.hess_U(theta).mean(0) + lam * torch.eye(2, dtype=DTYPE)
        h_hat = torch.diag(h_hat.diagonal()) if diagonal else h_hat
        s_new = (1 - rho) * s + rho * h_hat
        m_new = m - rho * torch.linalg.solve(s_new, g_hat)
        got = torch.diag(new.precision) if diagonal else new.precision
        assert torch.allclose(new.mean, m_new, rtol=0, atol=1e-13)
        assert torch.allclose(got, s_new, rtol=0, atol=1e-13)


def test_potentials_reject_bad_input():
    with pytest.raises(ValueError, match="0 or 1"):
        blr.LogisticRegressionPotential(torch.zeros(3, 2), torch.tensor([0.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match="same n"):
        blr.LogisticRegressionPotential(torch.zeros(3, 2), torch.zeros(4))
    with pytest.raises(ValueError, match="noise_precision"):
        blr.LinearRegressionPotential(torch.zeros(3, 2), torch.zeros(3), noise_precision=0.0)
    _, _, pot = _toy_logistic()
    with pytest.raises(ValueError, match="theta"):
        pot.U(torch.zeros(3, dtype=DTYPE))


def test_delta_blr_fixed_point_is_the_laplace_approximation():
    _, _, pot = _toy_logistic()
    lap = blr.laplace_approximation(pot.grad_U, pot.hess_U, torch.zeros(2, dtype=DTYPE))
    assert pot.grad_U(lap.mean).abs().max() < 1e-10
    assert torch.allclose(lap.precision, pot.hess_U(lap.mean), atol=1e-12)
    state, _ = blr.run_blr(GaussianBLR(torch.zeros(2, dtype=DTYPE), torch.eye(2, dtype=DTYPE)), pot.grad_U,
                           pot.hess_U, lr=0.5, num_steps=80)
    assert (state.mean - lap.mean).abs().max() < 1e-6 and (state.precision - lap.precision).abs().max() < 1e-6


def test_quadrature_blr_fixed_point_is_the_gaussian_vi_optimum():
    """Two independent routes to argmin E_q[U] - H(q): the BLR with quadrature, and L-BFGS on the objective.

    With the same Gauss-Hermite rule the two stationarity conditions differ only by the rule's error
    in Stein's identity (E_q[grad U (theta - m)^T] = E_q[hess U] Sigma): on this skewed posterior the
    two optima differ by 9e-6, 7e-7 and 1.6e-7 with 20, 30 and 40 nodes per dimension (measured), so
    40 nodes are used. Measured here: ~2e-7.
    """
    _, _, pot = _toy_logistic()
    lap = blr.laplace_approximation(pot.grad_U, pot.hess_U, torch.zeros(2, dtype=DTYPE))
    vi = blr.gaussian_vi_optimum(pot.U, lap, quadrature_points=40)
    state, _ = blr.run_blr(lap, pot.grad_U, pot.hess_U, lr=1.0, num_steps=40, method="quadrature", quadrature_points=40)
    assert (state.mean - vi.mean).abs().max() < 1e-6
    assert (state.covariance() - vi.covariance()).abs().max() < 1e-6
    # and it is not the Laplace approximation (the test can fail)
    assert (vi.mean - lap.mean).abs().max() > 1e-2


def test_reparam_hessian_estimate_is_unbiased():
    """Stein's lemma: E_q[S (theta - m) grad^T] = E_q[hess]; for a quadratic the target is the constant A."""
    a_mat = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=DTYPE)
    g, _ = _quadratic(torch.tensor([0.5, -0.5], dtype=DTYPE), a_mat)
    state = GaussianBLR(torch.zeros(2, dtype=DTYPE), torch.tensor([[2.0, 0.3], [0.3, 1.0]], dtype=DTYPE))
    k = 20000
    z = state.sample(k, generator=torch.Generator().manual_seed(0))
    # per-draw estimates (to get their SE), computed as expected_grad_hess does for one draw
    per = (z - state.mean) @ state.precision
    per_draw = per[:, :, None] * g(z)[:, None, :]
    per_draw = 0.5 * (per_draw + per_draw.transpose(1, 2))
    _, hess = blr.expected_grad_hess(state, g, "reparam", method="mc", num_samples=k,
                                     generator=torch.Generator().manual_seed(0))
    assert torch.allclose(hess, per_draw.mean(0), atol=1e-12)
    se = per_draw.std(0) / math.sqrt(k)  # ~0.02 here
    assert ((hess - a_mat).abs() < 4 * se).all()


@pytest.mark.slow
def test_von_with_monte_carlo_matches_the_gaussian_vi_optimum():
    """VON (K = 10 draws, rho_t = 0.2 / (1 + t/50), 1000 steps, natural parameters averaged over the
    second half) on the chapter's problem, against the L-BFGS optimum of the variational objective.

    The spread of this estimator across 48 independent chains was measured as sd = 0.0070 / 0.0082
    for the two means and 0.00098 / 0.00036 / 0.0012 for Sigma_11 / Sigma_12 / Sigma_22, with the
    mean over the 48 chains within 1 SE of the optimum (no visible bias). With 2 chains the SE is
    sd / sqrt(2); the tolerance is 4 SE.
    """
    from bdk.experiments import blr as E

    cfg = E.CONFIGS["quick"]
    pot = E.logistic_problem(cfg)
    lik = blr.LogisticRegressionPotential(pot.x, pot.y, prior_precision=0.0)
    lap = blr.laplace_approximation(pot.grad_U, pot.hess_U, torch.zeros(2, dtype=DTYPE))
    vi = blr.gaussian_vi_optimum(pot.U, lap, quadrature_points=20)
    start = GaussianBLR(torch.zeros(2, dtype=DTYPE), torch.eye(2, dtype=DTYPE))
    means, covs = [], []
    for c in range(2):
        _, traj = blr.run_blr(start, lik.grad_U, lik.hess_U, lr=lambda t: 0.2 / (1 + t / 50), num_steps=1000,
                              method="mc", num_samples=10, generator=torch.Generator().manual_seed(77 + c),
                              prior_precision=pot.prior_precision)
        prec = traj["precision"][501:].mean(0)
        eta1 = (traj["precision"][501:] @ traj["mean"][501:, :, None])[..., 0].mean(0)
        est = GaussianBLR.from_natural(eta1, -0.5 * prec)
        means.append(est.mean)
        covs.append(est.covariance())
    mean, cov = torch.stack(means).mean(0), torch.stack(covs).mean(0)
    sd_mean = torch.tensor([0.0070, 0.0082], dtype=DTYPE)
    sd_cov = torch.tensor([[0.00098, 0.00036], [0.00036, 0.0012]], dtype=DTYPE)
    assert ((mean - vi.mean).abs() < 4 * sd_mean / math.sqrt(2)).all()
    assert ((cov - vi.covariance()).abs() < 4 * sd_cov / math.sqrt(2)).all()


# ------------------------------------------------------------------------------------------------
# The VON optimizer
# ------------------------------------------------------------------------------------------------


def _module_problem():
    _, _, pot = _toy_logistic()
    model = torch.nn.Linear(2, 1, bias=False).to(DTYPE)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[-0.5, 0.5]], dtype=DTYPE))
    return pot, model


def _loss(model, pot):
    return torch.nn.functional.binary_cross_entropy_with_logits(model(pot.x)[:, 0], pot.y)


def test_von_optimizer_equals_functional_diagonal_von():
    pot, model = _module_problem()
    n, lam, rho, h0, steps = pot.num_data, pot.prior_precision, 0.1, 0.1, 60
    opt = blr.VON(model.parameters(), lr=rho, ess=n, hess_init=h0, weight_decay=lam / n,
                  generator=torch.Generator().manual_seed(3))
    lik = blr.LogisticRegressionPotential(pot.x, pot.y, prior_precision=0.0)
    state = GaussianBLR(torch.tensor([-0.5, 0.5], dtype=DTYPE), torch.full((2,), n * (h0 + lam / n), dtype=DTYPE))
    gen = torch.Generator().manual_seed(3)
    for _ in range(steps):
        with opt.sampled_params(train=True):
            _loss(model, pot).backward()
        opt.step()
        state = blr.von_step(state, lik.grad_U, "reparam", lr=rho, generator=gen, prior_precision=lam)
        assert (model.weight.detach()[0] - state.mean).abs().max() < 1e-6  # measured: ~5e-16
        prec = opt.posterior_std()[0][0] ** -2
        assert ((prec - state.precision) / state.precision).abs().max() < 1e-6


def test_von_optimizer_gradient_magnitude_update():
    pot, model = _module_problem()
    n = pot.num_data
    opt = blr.VON(model.parameters(), lr=0.5, ess=n, hess_init=0.2, weight_decay=0.01,
                  hess_approx="gradient_magnitude", generator=torch.Generator().manual_seed(0))
    m0 = model.weight.detach().clone()
    with opt.sampled_params(train=True):
        loss = _loss(model, pot)
        loss.backward()
        g = model.weight.grad.detach().clone()
    opt.step()
    h = 0.5 * 0.2 + 0.5 * g**2
    assert torch.allclose(opt.state[model.weight]["hess"], h, atol=1e-15)
    assert torch.allclose(model.weight.detach(), m0 - 0.5 * (g + 0.01 * m0) / (h + 0.01), atol=1e-15)


def test_von_optimizer_argument_errors():
    params = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="lr"):
        blr.VON(params, lr=0.0, ess=10)
    with pytest.raises(ValueError, match="lr"):
        blr.VON(params, lr=2.0, ess=10)
    with pytest.raises(ValueError, match="ess"):
        blr.VON(params, lr=0.1, ess=0)
    with pytest.raises(ValueError, match="hess_init"):
        blr.VON(params, lr=0.1, ess=10, hess_init=-1.0)
    with pytest.raises(ValueError, match="weight_decay"):
        blr.VON(params, lr=0.1, ess=10, weight_decay=-1.0)
    with pytest.raises(ValueError, match="hess_approx"):
        blr.VON(params, lr=0.1, ess=10, hess_approx="exact")
    opt = blr.VON(params, lr=0.1, ess=10)
    with pytest.raises(RuntimeError, match="no sample"):
        opt.step()
    with pytest.raises(RuntimeError, match="backward"):
        with opt.sampled_params(train=True):
            pass  # no backward(): an error, and the mean is restored
    assert torch.equal(params[0].detach(), torch.zeros(2))
    with pytest.raises(ValueError, match="closure"):
        opt.step(lambda: 0.0)


def test_von_optimizer_restores_the_mean_after_an_exception_and_ignores_eval_samples():
    pot, model = _module_problem()
    opt = blr.VON(model.parameters(), lr=0.1, ess=20, generator=torch.Generator().manual_seed(0))
    before = model.weight.detach().clone()
    with pytest.raises(KeyError):
        with opt.sampled_params(train=True):
            assert not torch.equal(model.weight.detach(), before)  # perturbed inside
            raise KeyError("boom")
    assert torch.equal(model.weight.detach(), before)
    with opt.sampled_params(train=False):
        _loss(model, pot).backward()
    assert torch.equal(model.weight.detach(), before)
    with pytest.raises(RuntimeError, match="no sample"):
        opt.step()  # evaluation samples are not training samples


def test_von_optimizer_negative_precision_is_an_error_naming_the_step():
    param = torch.nn.Parameter(torch.zeros(1, dtype=DTYPE))
    opt = blr.VON([param], lr=1.0, ess=1, hess_init=1.0, generator=torch.Generator().manual_seed(0))
    with opt.sampled_params(train=True):
        # a concave loss: the Hessian estimate is negative on average
        (-(param**2).sum() * 50).backward()
    with pytest.raises(ValueError, match="VON step 1"):
        opt.step()


def test_von_optimizer_is_deterministic_and_state_dict_round_trips():
    def run(seed, steps=5):
        pot, model = _module_problem()
        opt = blr.VON(model.parameters(), lr=0.1, ess=20, hess_init=0.1, generator=torch.Generator().manual_seed(seed))
        for _ in range(steps):
            with opt.sampled_params(train=True):
                _loss(model, pot).backward()
            opt.step()
        return model, opt

    (m1, o1), (m2, _), (m3, _) = run(1), run(1), run(2)
    assert torch.equal(m1.weight, m2.weight) and not torch.equal(m1.weight, m3.weight)
    sd = o1.state_dict()
    pot, model = _module_problem()
    fresh = blr.VON(model.parameters(), lr=0.1, ess=20)
    fresh.load_state_dict(sd)
    assert torch.equal(fresh.state[model.weight]["hess"], o1.state[m1.weight]["hess"])
    assert fresh._steps == 5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_blr_step_follows_the_device():
    dev = torch.device("cuda")
    state = GaussianBLR(torch.zeros(2, device=dev, dtype=DTYPE), torch.eye(2, device=dev, dtype=DTYPE))
    g, h = _quadratic(torch.ones(2, device=dev, dtype=DTYPE), torch.eye(2, device=dev, dtype=DTYPE))
    new = blr.von_step(state, g, h, lr=0.5, num_samples=4, generator=torch.Generator(device=dev).manual_seed(0))
    assert new.mean.device.type == "cuda" and new.precision.device.type == "cuda"
