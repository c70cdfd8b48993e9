"""Tests of bdk.sde: closed forms, Lyapunov solutions, and SGD simulations against exact stationary laws.

Every statistical tolerance is derived in a comment from the standard error of the estimator.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bdk import sde


pytestmark = pytest.mark.usefixtures("one_thread")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


HESS = np.array([[2.0, 0.8], [0.8, 1.0]])
STD = np.array([0.5, 2.0])


# ---------------------------------------------------------------------------------------------
# closed forms
# ---------------------------------------------------------------------------------------------


def test_closed_forms():
    assert sde.sgd_temperature(0.1, 2.0) == pytest.approx(0.2)
    assert sde.sde_stationary_variance(4.0, 0.1, 2.0) == pytest.approx(0.05)
    # exact discrete variance: eta sigma^2 / (h (2 - eta h)) -> T/h as eta h -> 0
    assert sde.sgd_stationary_variance(4.0, 0.1, 2.0) == pytest.approx(0.4 / (4 * 1.6))
    assert sde.sgd_stationary_variance(1.0, 1e-6, 1.0) / sde.sde_stationary_variance(1.0, 1e-6, 1.0) == pytest.approx(1, abs=1e-6)
    np.testing.assert_allclose(sde.sgd_temperature(np.array([0.1, 0.2]), np.array([1.0, 2.0])), [0.05, 0.4])
    with pytest.raises(ValueError, match="lr < 2 / curvature"):
        sde.sgd_stationary_variance(1.0, 2.0, 1.0)
    with pytest.raises(ValueError):
        sde.sgd_temperature(-0.1, 1.0)


def test_stationary_covariance_solves_the_lyapunov_equations():
    c = np.diag(STD**2)
    lr = 0.05
    s_cont = sde.stationary_covariance(HESS, c, lr, "continuous")
    np.testing.assert_allclose(HESS @ s_cont + s_cont @ HESS, lr * c, atol=1e-12)
    s_disc = sde.stationary_covariance(HESS, c, lr, "discrete")
    a = np.eye(2) - lr * HESS
    np.testing.assert_allclose(a @ s_disc @ a.T + lr**2 * c, s_disc, atol=1e-12)
    # 1-D: both reduce to the closed forms
    assert sde.stationary_covariance([[3.0]], [[2.0]], 0.1, "continuous")[0, 0] == pytest.approx(
        sde.sde_stationary_variance(3.0, 0.1, math.sqrt(2.0)))
    assert sde.stationary_covariance([[3.0]], [[2.0]], 0.1, "discrete")[0, 0] == pytest.approx(
        sde.sgd_stationary_variance(3.0, 0.1, math.sqrt(2.0)))


def test_per_parameter_rates_restore_a_single_temperature():
    # eta_i = eta' / sigma_i^2: the continuous stationary covariance is (eta'/2) H^{-1}, a Gibbs density
    # of L at T = eta'/2, for any (non-diagonal) H; with one common rate it is not proportional to H^{-1}.
    lr_prime = 0.05
    c = np.diag(STD**2)
    s = sde.stationary_covariance(HESS, c, lr_prime / STD**2, "continuous")
    np.testing.assert_allclose(s, lr_prime / 2 * np.linalg.inv(HESS), atol=1e-12)
    s_common = sde.stationary_covariance(HESS, c, 0.05, "continuous")
    ratio = s_common @ HESS
    assert abs(ratio[0, 0] - ratio[1, 1]) > 0.01  # not a multiple of the identity


def test_stationary_covariance_errors():
    with pytest.raises(ValueError, match="diverges"):
        sde.stationary_covariance(HESS, np.eye(2), 1.0, "discrete")  # lr * 2.44 > 2
    with pytest.raises(ValueError, match="method"):
        sde.stationary_covariance(HESS, np.eye(2), 0.1, "euler")
    with pytest.raises(ValueError, match="square"):
        sde.stationary_covariance(HESS, np.eye(3), 0.1)
    with pytest.raises(ValueError, match="positive"):
        sde.stationary_covariance(HESS, np.eye(2), [0.1, -0.1])


# ---------------------------------------------------------------------------------------------
# noisy SGD
# ---------------------------------------------------------------------------------------------


def test_noisy_sgd_properties():
    grad = lambda t: t @ torch.tensor(HESS, dtype=t.dtype)  # noqa: E731
    theta0 = torch.randn(30, 2, generator=gen(0), dtype=torch.float64)
    a = sde.noisy_sgd(grad, theta0, 0.1, 20, noise_std=STD, generator=gen(1))
    b = sde.noisy_sgd(grad, theta0, 0.1, 20, noise_std=STD, generator=gen(1))
    assert a.shape == theta0.shape and a.dtype == theta0.dtype and torch.equal(a, b)
    # a diagonal noise_cov is the same chain as noise_std (the Cholesky factor is diag(std))
    c = sde.noisy_sgd(grad, theta0, 0.1, 20, noise_cov=np.diag(STD**2), generator=gen(1))
    torch.testing.assert_close(a, c, rtol=0, atol=1e-12)
    # zero noise is gradient descent; per-parameter rates act per coordinate
    gd = theta0.clone()
    lr = torch.tensor([0.1, 0.02], dtype=torch.float64)
    for _ in range(20):
        gd = gd - lr * grad(gd)
    torch.testing.assert_close(sde.noisy_sgd(grad, theta0, [0.1, 0.02], 20, noise_std=0.0), gd, rtol=0, atol=1e-13)
    final, traj = sde.noisy_sgd(grad, theta0, 0.1, 20, noise_std=1.0, generator=gen(2), thin=5, return_trajectory=True)
    assert traj.shape == (5, 30, 2) and torch.equal(traj[0], theta0)


def test_noisy_sgd_errors():
    grad = lambda t: t  # noqa: E731
    theta0 = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="exactly one"):
        sde.noisy_sgd(grad, theta0, 0.1, 1)
    with pytest.raises(ValueError, match="exactly one"):
        sde.noisy_sgd(grad, theta0, 0.1, 1, noise_std=1.0, noise_cov=np.eye(2))
    with pytest.raises(ValueError, match="lr"):
        sde.noisy_sgd(grad, theta0, [0.1, 0.1, 0.1], 1, noise_std=1.0)
    with pytest.raises(ValueError, match="noise_std"):
        sde.noisy_sgd(grad, theta0, 0.1, 1, noise_std=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match=r"shape \(4, 2\)"):
        sde.noisy_sgd(lambda t: t[:, 0], theta0, 0.1, 1, noise_std=1.0)
    with pytest.raises(FloatingPointError, match="between step 1 and 100"):
        sde.noisy_sgd(grad, torch.ones(4, 2), 30.0, 1000, noise_std=0.0)  # x29 per step: overflows by step 27


@pytest.mark.parametrize("lr", [0.1, 1.0, 1.5])
def test_noisy_sgd_stationary_variance_is_the_exact_discrete_one(lr):
    # L = h theta^2 / 2 with h = 1, sigma = 1. n = 20,000 independent chains started at 0 and run until
    # (1 - lr h)^(2k) < 1e-6; the SE of the sample variance is v sqrt(2/n) = 0.01 v; tolerance 4 SE.
    n = 20_000
    steps = 1 if lr == 1.0 else math.ceil(math.log(1e-6) / (2 * math.log(abs(1 - lr))))  # lr h = 1: one step
    theta = sde.noisy_sgd(lambda t: t, torch.zeros(n, 1, dtype=torch.float64), lr, steps, noise_std=1.0, generator=gen(3))
    exact = sde.sgd_stationary_variance(1.0, lr, 1.0)
    tol = 4 * exact * math.sqrt(2 / n)
    assert abs(theta.var().item() - exact) < tol
    if lr >= 1.0:  # the test can fail: the SDE's T/h is 2 (lr = 1) or 4 (lr = 1.5) times smaller
        assert abs(theta.var().item() - sde.sde_stationary_variance(1.0, lr, 1.0)) > tol


def test_two_temperature_sgd_covariance_is_the_discrete_lyapunov_solution():
    # 2-D, one common rate, noise std (0.5, 2). n = 20,000 chains: SE of a covariance entry is
    # sqrt((S_ii S_jj + S_ij^2) / n); tolerance 4 SE per entry.
    n, lr = 20_000, 0.05
    h = torch.tensor(HESS, dtype=torch.float64)
    theta = sde.noisy_sgd(lambda t: t @ h, torch.zeros(n, 2, dtype=torch.float64), lr, 300, noise_std=STD, generator=gen(4))
    s = sde.stationary_covariance(HESS, np.diag(STD**2), lr, "discrete")
    se = np.sqrt((np.outer(np.diag(s), np.diag(s)) + s**2) / n)
    assert (np.abs(np.cov(theta.numpy().T) - s) < 4 * se).all()


# ---------------------------------------------------------------------------------------------
# minibatch SGD on least squares
# ---------------------------------------------------------------------------------------------


def _toy_regression():
    g = gen(5)
    x = torch.randn(40, 3, generator=g, dtype=torch.float64)
    x[:, 0] *= 2.0
    y = x @ torch.tensor([1.0, -0.5, 0.3], dtype=torch.float64) + 0.5 * torch.randn(40, generator=g, dtype=torch.float64)
    w_star = torch.linalg.lstsq(x, y[:, None]).solution[:, 0]
    return x, y, w_star


def test_gradient_noise_covariance_formula_matches_sampled_minibatches():
    # M = 100,000 minibatch gradients (B = 4, with replacement) at w*: each entry of the sample
    # covariance has SE std(u_j u_k) / sqrt(M) (u: centred gradients), estimated from the draws; 4 SE.
    x, y, w = _toy_regression()
    batch, m = 4, 100_000
    idx = torch.randint(len(x), (m, batch), generator=gen(6))
    grads = torch.einsum("mbd,mb->md", x[idx], torch.einsum("mbd,d->mb", x[idx], w) - y[idx]) / batch
    u = grads - grads.mean(0)
    measured = (u.T @ u / (m - 1)).numpy()
    se = (u[:, :, None] * u[:, None, :]).std(0).numpy() / math.sqrt(m)
    formula = sde.least_squares_gradient_noise_covariance(x, y, w, batch).numpy()
    assert (np.abs(measured - formula) < 4 * se).all()
    # the mean gradient at the optimum is zero
    assert torch.allclose(grads.mean(0), torch.zeros(3, dtype=torch.float64), atol=4 * grads.std(0).max().item() / math.sqrt(m))


def test_minibatch_sgd_properties_and_errors():
    x, y, w = _toy_regression()
    w0 = w.expand(5, 3).contiguous()
    a = sde.minibatch_sgd_least_squares(x, y, w0, 0.05, 4, 10, generator=gen(7))
    b = sde.minibatch_sgd_least_squares(x, y, w0, 0.05, 4, 10, generator=gen(7))
    assert a.shape == w0.shape and torch.equal(a, b)
    final, traj = sde.minibatch_sgd_least_squares(x, y, w0, 0.05, 4, 10, generator=gen(7), thin=2, return_trajectory=True)
    assert traj.shape == (6, 5, 3) and torch.equal(final, a)
    with pytest.raises(ValueError, match="w0"):
        sde.minibatch_sgd_least_squares(x, y, w0.float(), 0.05, 4, 10)
    with pytest.raises(ValueError, match="y must"):
        sde.minibatch_sgd_least_squares(x, y[:-1], w0, 0.05, 4, 10)
    with pytest.raises(ValueError, match="lr"):
        sde.minibatch_sgd_least_squares(x, y, w0, 0.0, 4, 10)
    with pytest.raises(FloatingPointError, match="reduce lr"):
        sde.minibatch_sgd_least_squares(x, y, w0, 5.0, 4, 500)


def test_minibatch_sgd_covariance_is_the_exact_one_with_state_dependent_noise():
    # lr = 0.1, B = 2 on the toy problem; slowest relaxation 1 / (lr * 0.68) = 15 steps, so 200 steps
    # from w* reach stationarity (the covariance's deficit decays like e^{-2 * 200/14}). n = 10,000
    # chains: SE of each covariance entry sqrt((S_ii S_jj + S_ij^2) / n); tolerance 4 SE.
    x, y, w = _toy_regression()
    lr, batch, n = 0.1, 2, 10_000
    exact = sde.least_squares_sgd_stationary_covariance(x, y, lr, batch)
    iterates = sde.minibatch_sgd_least_squares(x, y, w.expand(n, 3).contiguous(), lr, batch, 200, generator=gen(8))
    measured = np.cov(iterates.numpy().T)
    se = np.sqrt((np.outer(np.diag(exact), np.diag(exact)) + exact**2) / n)
    assert (np.abs(measured - exact) < 4 * se).all()
    # The test has power: the discrete Lyapunov prediction, which ignores the minibatch Hessian's
    # fluctuation, is off by many SE here (about 40 in the largest entry).
    hess = (x.T @ x / len(x)).numpy()
    noise = sde.least_squares_gradient_noise_covariance(x, y, w, batch).numpy()
    lyapunov = sde.stationary_covariance(hess, noise, lr, "discrete")
    assert (np.abs(measured - lyapunov) > 8 * se).any()
    # lr * largest Hessian eigenvalue = 1.0 < 2, so gradient descent converges, but with single-example
    # batches the fluctuating Hessian makes the second moment of SGD grow without bound
    with pytest.raises(ValueError, match="diverges"):
        sde.least_squares_sgd_stationary_covariance(x, y, 0.3, 1)


# ---------------------------------------------------------------------------------------------
# the kernel and the driver
# ---------------------------------------------------------------------------------------------
# noisy_sgd is noisy_sgd_step run by bdk.langevin.run_chains. The reference is a frozen, independent
# copy of the loop it had before (the recorded experiments depend on its numbers): equal bit for bit.


def _reference_noisy_sgd(grad_L, theta0, lr, num_steps, std=None, chol=None, g=None):
    theta = theta0.clone()
    noise = torch.empty_like(theta)
    for _ in range(num_steps):
        grad = grad_L(theta)
        noise.normal_(generator=g)
        update = noise.mul_(std) if chol is None else noise @ chol.T
        update.add_(grad)
        if lr.dim() == 0:
            theta.add_(update, alpha=-float(lr))
        else:
            theta.addcmul_(update, lr, value=-1.0)
    return theta


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("per_parameter", [False, True])
@pytest.mark.parametrize("full_cov", [False, True])
def test_noisy_sgd_equals_the_reference_loop_bit_for_bit(dtype, per_parameter, full_cov):
    hess = torch.tensor(HESS, dtype=dtype)
    grad_L = lambda theta: theta @ hess  # noqa: E731
    theta0 = torch.randn(300, 2, generator=gen(0), dtype=dtype)
    lr = [0.1, 0.05] if per_parameter else 0.1
    cov = np.array([[1.0, 0.3], [0.3, 0.5]])
    noise = dict(noise_cov=cov) if full_cov else dict(noise_std=STD)
    got = sde.noisy_sgd(grad_L, theta0, lr, 250, generator=gen(1), **noise)
    ref = _reference_noisy_sgd(
        grad_L, theta0, torch.tensor(lr, dtype=dtype), 250,
        std=None if full_cov else torch.tensor(STD, dtype=dtype),
        chol=torch.tensor(np.linalg.cholesky(cov), dtype=dtype) if full_cov else None, g=gen(1))
    assert torch.equal(got, ref)


def test_noisy_sgd_step_in_a_loop_equals_noisy_sgd():
    grad_L = lambda theta: 2.0 * theta  # noqa: E731
    theta0 = torch.randn(100, 3, generator=gen(2))
    g = gen(3)
    theta = theta0.clone()
    for _ in range(60):
        theta = sde.noisy_sgd_step(theta, grad_L, 0.2, 0.7, generator=g)
    assert torch.equal(theta, sde.noisy_sgd(grad_L, theta0, 0.2, 60, noise_std=0.7, generator=gen(3)))


def test_minibatch_sgd_equals_the_reference_loop_bit_for_bit():
    x = torch.randn(50, 3, generator=gen(4), dtype=torch.float64)
    y = x @ torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64) + 0.1 * torch.randn(50, generator=gen(5), dtype=torch.float64)
    w0 = torch.zeros(20, 3, dtype=torch.float64)
    g, w = gen(6), w0.clone()
    for _ in range(250):
        idx = torch.randint(50, (20, 5), generator=g)
        residual = torch.einsum("cbd,cd->cb", x[idx], w) - y[idx]
        w = w - (0.05 / 5) * torch.einsum("cbd,cb->cd", x[idx], residual)
    assert torch.equal(sde.minibatch_sgd_least_squares(x, y, w0, 0.05, 5, 250, gen(6)), w)
