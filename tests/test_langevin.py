"""Tests of bdk.langevin: property tests, and statistical tests against exact answers.

Exact references used here: the Gibbs density (closed-form normalisers, or quadrature in 1-D) and its
bin probabilities; the AR(1) / discrete-Lyapunov stationary law of Euler-Maruyama on a Gaussian; the
stationary law of the Euler-Maruyama chain on the double well computed on a grid; the Ornstein-Uhlenbeck
transition density for the Fokker-Planck solver. Every statistical tolerance is derived in a comment.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bdk import langevin as L


pytestmark = pytest.mark.usefixtures("one_thread")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


DW = L.DoubleWell(height=1.0, tilt=0.5)
POTENTIALS = {
    "double_well": DW,
    "gaussian": L.Gaussian([0.5, -1.0], [[1.0, 0.6], [0.6, 2.0]]),
    "mixture": L.GaussianMixture([0.3, 0.7], [[-1.0, 0.0], [1.5, 1.0]], [0.5, 1.0]),
    "banana": L.Banana(1.0, 0.5, 0.5),
}


# ---------------------------------------------------------------------------------------------
# potentials
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(POTENTIALS))
def test_potential_shapes_and_analytic_gradient_match_autograd(name):
    pot = POTENTIALS[name]
    x = torch.randn(7, pot.dim, dtype=torch.float64, generator=gen(0))
    assert pot.U(x).shape == (7,)
    assert pot(x).shape == (7,)
    g = pot.grad_U(x)
    assert g.shape == x.shape and g.dtype == torch.float64
    torch.testing.assert_close(g, L.Potential.grad_U(pot, x), rtol=1e-10, atol=1e-10)
    x32 = x.float()
    assert pot.U(x32).dtype == torch.float32 and pot.grad_U(x32).dtype == torch.float32


def test_potential_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"\(num_particles, 2\)"):
        POTENTIALS["banana"].U(torch.zeros(5))
    with pytest.raises(ValueError, match="positive definite"):
        L.Gaussian([0.0, 0.0], [[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(ValueError, match="height"):
        L.DoubleWell(height=-1.0)


def test_gibbs_densities_are_normalised():
    # 1-D double well at two temperatures: a fine trapezoid rule agrees with the quadrature normaliser
    x = torch.linspace(-4, 4, 80_001, dtype=torch.float64)
    for temperature in (1.0, 0.3):
        mass = torch.trapezoid(DW.density(x[:, None], temperature), x).item()
        assert abs(mass - 1) < 1e-9
    # Gaussian at T = 2 is N(m, 2 Sigma): compare with scipy
    from scipy import stats

    g = POTENTIALS["gaussian"]
    pts = torch.randn(5, 2, dtype=torch.float64, generator=gen(1))
    ref = stats.multivariate_normal(g.mean.numpy(), 2 * g.cov.numpy()).logpdf(pts.numpy())
    np.testing.assert_allclose(g.log_density(pts, 2.0).numpy(), ref, rtol=1e-12)
    # mixture at T = 1 is the mixture density itself
    m = POTENTIALS["mixture"]
    ref = np.log(sum(w * stats.multivariate_normal(mu, c).pdf(pts.numpy())
                     for w, mu, c in zip(m.weights.numpy(), m.means.numpy(), m.covs.numpy())))
    np.testing.assert_allclose(m.log_density(pts).numpy(), ref, rtol=1e-12)
    # banana at T = 0.5 and its bin probabilities: the mass inside a wide box is 1 up to the tails
    b = POTENTIALS["banana"]
    edges = (np.linspace(-5, 5, 41), np.linspace(-4, 10, 57))
    assert abs(L.gibbs_bin_probabilities(b, edges, temperature=0.5).sum().item() - 1) < 1e-9
    with pytest.raises(NotImplementedError):
        m.log_normaliser(2.0)


def test_exact_samplers_have_the_right_moments():
    # n = 40,000 draws: SE of a mean of a unit-variance coordinate is 0.005 (4 SE = 0.02); SE of a
    # variance v is v sqrt(2/n) = 0.0071 v (4 SE = 0.028 v).
    n = 40_000
    g = POTENTIALS["gaussian"]
    x = g.sample(n, temperature=2.0, generator=gen(2), dtype=torch.float64)
    assert (x.mean(0) - g.mean).abs().max() < 4 * math.sqrt(2 * 2.0 / n)
    torch.testing.assert_close(torch.cov(x.T), 2 * g.cov, atol=0.028 * 4.0, rtol=0)
    b = POTENTIALS["banana"]
    x = b.sample(n, generator=gen(3), dtype=torch.float64)
    assert abs(x[:, 0].var().item() - 1.0) < 0.028  # x1 ~ N(0, s1^2)
    assert abs(x[:, 1].mean().item()) < 4 * math.sqrt(x[:, 1].var().item() / n)  # E[x2] = b (E x1^2 - s1^2) = 0
    # the 1-D inverse-CDF sampler of the double well: E[x] by quadrature, SE = sd / sqrt(n)
    xs = torch.linspace(-4, 4, 80_001, dtype=torch.float64)
    p = DW.density(xs[:, None])
    mean = torch.trapezoid(p * xs, xs).item()
    sd = math.sqrt(torch.trapezoid(p * xs**2, xs).item() - mean**2)
    x = DW.sample(n, generator=gen(4), dtype=torch.float64)
    assert abs(x.mean().item() - mean) < 4 * sd / math.sqrt(n)


# ---------------------------------------------------------------------------------------------
# Euler-Maruyama: properties
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_euler_maruyama_shapes_dtypes_and_trajectory(dtype):
    x0 = torch.zeros(11, 2, dtype=dtype)
    x = L.euler_maruyama(POTENTIALS["banana"], x0, 0.01, 10, generator=gen(0))
    assert x.shape == x0.shape and x.dtype == dtype and x.device == x0.device
    assert torch.equal(x0, torch.zeros(11, 2, dtype=dtype))  # x0 is not modified
    final, traj = L.euler_maruyama(POTENTIALS["banana"], x0, 0.01, 10, generator=gen(0), thin=3, return_trajectory=True)
    assert traj.shape == (4, 11, 2)  # steps 0, 3, 6, 9
    assert torch.equal(traj[0], x0) and torch.equal(final, x)
    assert L.euler_maruyama(DW, x0[:, :1], 0.01, 0, generator=gen(0)).equal(x0[:, :1])


def test_euler_maruyama_is_deterministic_under_a_seed():
    x0 = torch.randn(50, 1, generator=gen(9))
    a = L.euler_maruyama(DW, x0, 0.01, 20, generator=gen(1))
    b = L.euler_maruyama(DW, x0, 0.01, 20, generator=gen(1))
    c = L.euler_maruyama(DW, x0, 0.01, 20, generator=gen(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_euler_maruyama_zero_temperature_is_gradient_descent():
    x0 = torch.randn(20, 2, dtype=torch.float64, generator=gen(3))
    pot = POTENTIALS["gaussian"]
    x = x0.clone()
    for _ in range(15):
        x = x - 0.05 * pot.grad_U(x)
    torch.testing.assert_close(L.euler_maruyama(pot, x0, 0.05, 15, temperature=0.0), x, rtol=0, atol=1e-14)
    # zero gradient and zero temperature leave the state unchanged; a positive gradient moves down
    zero = lambda z: torch.zeros_like(z)  # noqa: E731
    assert torch.equal(L.euler_maruyama(zero, x0, 0.1, 5, temperature=0.0), x0)
    one = lambda z: torch.ones_like(z)  # noqa: E731
    assert (L.euler_maruyama(one, x0, 0.1, 1, temperature=0.0) < x0).all()


def test_euler_maruyama_matches_the_sgld_convention_with_lr_twice_the_step():
    # SGLD: theta <- theta - lr/2 grad U + sqrt(lr T) xi with lr = 2h is the same chain, draw for draw
    x0 = torch.randn(30, 2, dtype=torch.float64, generator=gen(5))
    pot, h, temperature = POTENTIALS["mixture"], 0.02, 0.7
    g = gen(6)
    x = x0.clone()
    lr = 2 * h
    for _ in range(10):
        xi = torch.randn(x.shape, generator=g, dtype=x.dtype)
        x = x - lr / 2 * pot.grad_U(x) + math.sqrt(lr * temperature) * xi
    torch.testing.assert_close(L.euler_maruyama(pot, x0, h, 10, temperature, generator=gen(6)), x, rtol=0, atol=1e-13)


def test_euler_maruyama_argument_errors():
    x0 = torch.zeros(4, 1)
    with pytest.raises(ValueError, match=r"x0\[:, None\]"):
        L.euler_maruyama(DW, torch.zeros(4), 0.1, 1)
    with pytest.raises(TypeError, match="floating-point"):
        L.euler_maruyama(DW, torch.zeros(4, 1, dtype=torch.int64), 0.1, 1)
    with pytest.raises(ValueError, match="step_size"):
        L.euler_maruyama(DW, x0, -0.1, 1)
    with pytest.raises(ValueError, match="step_size"):
        L.euler_maruyama(DW, x0, float("nan"), 1)
    with pytest.raises(ValueError, match="temperature"):
        L.euler_maruyama(DW, x0, 0.1, 1, temperature=-1.0)
    with pytest.raises(TypeError, match="num_steps"):
        L.euler_maruyama(DW, x0, 0.1, 2.5)
    with pytest.raises(TypeError, match="grad_U"):
        L.euler_maruyama("not callable", x0, 0.1, 1)
    with pytest.raises(ValueError, match="shape"):
        L.euler_maruyama(lambda z: z.sum(1), x0, 0.1, 1)
    with pytest.raises(ValueError, match="return_trajectory"):
        L.euler_maruyama(DW, x0, 0.1, 1, thin=2)
    with pytest.raises(TypeError, match="Generator"):
        L.euler_maruyama(DW, x0, 0.1, 1, generator=0)
    with pytest.raises(ValueError, match="NaN"):
        L.euler_maruyama(DW, torch.tensor([[float("nan")]]), 0.1, 1)


def test_euler_maruyama_stops_on_divergence_naming_the_steps():
    # U = x^4: from x = 5 with h = 0.5 the explicit step overshoots and explodes within a few steps
    with pytest.raises(FloatingPointError, match=r"between step 1 and step 100"):
        L.euler_maruyama(lambda z: 4 * z**3, torch.full((3, 1), 5.0), 0.5, 300, temperature=0.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_samplers_run_on_cuda():
    dev = torch.device("cuda")
    x0 = torch.zeros(100, 2, device=dev)
    g = torch.Generator(device=dev).manual_seed(0)
    x = L.euler_maruyama(POTENTIALS["banana"], x0, 0.01, 10, generator=g)
    assert x.device.type == "cuda"
    y, rate = L.mala(POTENTIALS["banana"], x0, 0.01, 10, generator=g)
    assert y.device.type == "cuda" and 0 <= rate <= 1
    with pytest.raises(ValueError, match="generator"):
        L.euler_maruyama(DW, x0[:, :1], 0.01, 1, generator=gen(0))


# ---------------------------------------------------------------------------------------------
# Euler-Maruyama: statistics against exact answers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("h", [0.1, 0.4])
def test_euler_maruyama_variance_on_a_gaussian_is_the_exact_ar1_variance(h):
    # U = x^2/2: x' = (1 - h) x + sqrt(2h) xi is AR(1) with stationary variance 2h / (1 - (1-h)^2)
    # = 1 / (1 - h/2) (not the SDE's 1). n = 50,000 independent chains started from N(0, 1) and run
    # for t = 10 (the initial variance error decays like (1-h)^(2k) < 1e-8): SE of the sample variance
    # is v sqrt(2/n) = 0.0063 v; tolerance 4 SE.
    n = 50_000
    exact = 1 / (1 - h / 2)
    x0 = torch.randn(n, 1, dtype=torch.float64, generator=gen(10))
    x = L.euler_maruyama(L.Gaussian([0.0], 1.0), x0, h, int(10 / h), generator=gen(11))
    tol = 4 * exact * math.sqrt(2 / n)
    assert abs(x.var().item() - exact) < tol
    if h == 0.4:  # the test can fail: the continuous-time answer 1 is 0.25 away, ~40 SE
        assert abs(x.var().item() - 1.0) > tol


def test_euler_maruyama_covariance_on_a_2d_gaussian_solves_the_discrete_lyapunov_equation():
    # U = x^T P x / 2: x' = (I - hP) x + sqrt(2h) xi, stationary S = A S A^T + 2h I (A = I - hP).
    # n = 40,000 chains: SE of a covariance entry is sqrt((S_ii S_jj + S_ij^2) / n); tolerance 4 SE.
    from scipy import linalg

    pot = L.Gaussian([0.0, 0.0], [[1.0, 0.8], [0.8, 1.0]])
    h, n = 0.1, 40_000
    a = np.eye(2) - h * pot.precision.numpy()
    s = linalg.solve_discrete_lyapunov(a, 2 * h * np.eye(2))
    x0 = pot.sample(n, generator=gen(12), dtype=torch.float64)
    x = L.euler_maruyama(pot, x0, h, 400, generator=gen(13))
    measured = np.cov(x.numpy().T)
    se = np.sqrt((np.outer(np.diag(s), np.diag(s)) + s**2) / n)
    assert (np.abs(measured - s) < 4 * se).all()
    assert (np.abs(measured - pot.cov.numpy()) > 4 * se).any()  # ... and it is not the Gibbs covariance


GRID = torch.linspace(-3.0, 3.0, 1201, dtype=torch.float64)
DX = float(GRID[1] - GRID[0])


def _grid_bin_probabilities(density: torch.Tensor, edges: np.ndarray) -> torch.Tensor:
    """Bin probabilities of a density tabulated on GRID (bins aligned with grid points), trapezoid rule."""
    cdf = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumulative_trapezoid(density, GRID)])
    values = np.interp(edges, GRID.numpy(), cdf.numpy())
    return torch.from_numpy(np.diff(values))


def test_stationary_density_of_the_chain_is_exact_on_a_gaussian():
    # On U = x^2/2 the Euler-Maruyama chain's stationary law is N(0, 1 / (1 - h/2)) exactly
    # (on a grid that covers the support: [-8, 8], 8.4 standard deviations)
    h = 0.2
    var = 1 / (1 - h / 2)
    grid = torch.linspace(-8, 8, 1601, dtype=torch.float64)
    p = L.euler_maruyama_stationary_density_1d(L.Gaussian([0.0], 1.0), grid, h)
    exact = torch.exp(-grid**2 / (2 * var)) / math.sqrt(2 * math.pi * var)
    assert (p - exact).abs().max() < 1e-9
    with pytest.raises(ValueError, match="resolve"):
        L.euler_maruyama_stationary_density_1d(DW, torch.linspace(-3, 3, 61, dtype=torch.float64), 0.001)


EDGES = np.linspace(-2.5, 2.5, 51)


def test_euler_maruyama_histogram_matches_the_chains_own_stationary_law_not_gibbs():
    # n = 20,000 chains from exact Gibbs draws, h = 0.03, t = 8 (6.4 relaxation times: the law is within
    # e^-6.4 * TV(pi_h, Gibbs) = 1e-4 of the chain's stationary law pi_h). Under iid sampling from the
    # true bin probabilities the TV distance has mean m and sd s (tv_null_moments); tolerance m + 4 s.
    n, h = 20_000, 0.03
    x0 = DW.sample(n, generator=gen(20))
    x = L.euler_maruyama(DW, x0, h, int(8 / h), generator=gen(21))
    p_chain = _grid_bin_probabilities(L.euler_maruyama_stationary_density_1d(DW, GRID, h), EDGES)
    m, s = L.tv_null_moments(p_chain, n)
    assert L.histogram_tv_distance(x, EDGES, p_chain) < m + 4 * s
    # The test has power: against Gibbs the same histogram is far off (the bias TV(pi_h, Gibbs) is 0.046)
    p_gibbs = L.gibbs_bin_probabilities(DW, EDGES)
    m, s = L.tv_null_moments(p_gibbs, n)
    assert L.histogram_tv_distance(x, EDGES, p_gibbs) > m + 4 * s


def test_euler_maruyama_converges_to_gibbs_from_a_narrow_start():
    # n = 20,000 chains all started at x = 1.5, h = 0.002, t = 10 (8 relaxation times of 1.25: the
    # initial error, at most 1, has decayed to 3e-4). By the triangle inequality,
    # TV(hist, Gibbs) <= TV(hist, pi_h) + TV(pi_h, Gibbs): the first term is below m + 4 s under iid
    # sampling, the second is the exact discretisation bias on these bins (about 0.003 here).
    n, h = 20_000, 0.002
    x = L.euler_maruyama(DW, torch.full((n, 1), 1.5), h, int(10 / h), generator=gen(22))
    p_gibbs = L.gibbs_bin_probabilities(DW, EDGES)
    p_chain = _grid_bin_probabilities(L.euler_maruyama_stationary_density_1d(DW, GRID, h), EDGES)
    bias = 0.5 * ((p_chain - p_gibbs).abs().sum() + abs(p_chain.sum() - p_gibbs.sum())).item()
    m, s = L.tv_null_moments(p_gibbs, n)
    assert L.histogram_tv_distance(x, EDGES, p_gibbs) < m + 4 * s + bias + 3e-4


# ---------------------------------------------------------------------------------------------
# MALA
# ---------------------------------------------------------------------------------------------


def test_mala_properties():
    x0 = torch.randn(40, 2, generator=gen(30))
    pot = POTENTIALS["mixture"]
    x, rate = L.mala(pot, x0, 0.1, 20, generator=gen(31))
    assert x.shape == x0.shape and x.dtype == x0.dtype and 0 < rate <= 1
    y, rate2 = L.mala(pot, x0, 0.1, 20, generator=gen(31))
    assert torch.equal(x, y) and rate == rate2
    # autograd through a plain callable gives the same chain as the analytic gradient
    z, rate3 = L.mala(pot.U, x0, 0.1, 20, generator=gen(31))
    torch.testing.assert_close(z, x, rtol=0, atol=1e-5)
    final, rate4, traj = L.mala(pot, x0, 0.1, 20, generator=gen(31), thin=5, return_trajectory=True)
    assert traj.shape == (5, 40, 2) and torch.equal(final, x)
    with pytest.raises(ValueError, match="temperature"):
        L.mala(pot, x0, 0.1, 1, temperature=0.0)
    with pytest.raises(ValueError, match=r"\(num_particles,\)"):
        L.mala(lambda z: z, x0, 0.1, 1)
    with pytest.raises(FloatingPointError, match="not finite"):
        L.mala(lambda z: torch.log(z[:, 0]), -torch.ones(3, 1), 0.1, 1)
    assert math.isnan(L.mala(pot, x0, 0.1, 0)[1])


def test_mala_acceptance_tends_to_one_as_the_step_tends_to_zero():
    # The rejection probability of MALA is O(h^{3/2}) in fixed dimension (measured: about 2e-4 at
    # h = 1e-3 on this double well, so about 7e-6 at h = 1e-4). With 5,000 chains x 100 steps = 5e5
    # proposals the count of rejections at 1e-4 is Poisson with mean ~3.5, so < 1e-4 (50 rejections)
    # is a loose bound that still fails for any O(h) error; the sequence must also be monotone.
    x0 = DW.sample(5_000, generator=gen(32))
    rates = [L.mala(DW, x0, h, 100, generator=gen(33))[1] for h in (0.3, 0.03, 1e-4)]
    assert rates[0] < rates[1] < rates[2]
    assert 1 - rates[2] < 1e-4


def test_mala_is_exact_at_a_large_step_where_euler_maruyama_fails():
    # Double well at h = 0.1 (acceptance ~0.83): Euler-Maruyama is unstable here, MALA keeps the Gibbs
    # law exactly. n = 20,000 independent chains from exact draws, 100 steps each: the final states are
    # iid Gibbs draws, so the TV distance is below m + 4 s (tv_null_moments).
    n = 20_000
    x0 = DW.sample(n, generator=gen(34))
    x, rate = L.mala(DW, x0, 0.1, 100, generator=gen(35))
    assert 0.7 < rate < 0.95
    p = L.gibbs_bin_probabilities(DW, EDGES)
    m, s = L.tv_null_moments(p, n)
    assert L.histogram_tv_distance(x, EDGES, p) < m + 4 * s
    # Gaussian U = x^2/2 at h = 0.8: MALA's variance is 1 (EM's would be 1 / (1 - 0.4) = 1.67);
    # SE of the variance of 20,000 iid draws is sqrt(2/n) = 0.01, tolerance 4 SE.
    g = L.Gaussian([0.0], 1.0)
    y, _ = L.mala(g, g.sample(n, generator=gen(36)), 0.8, 50, generator=gen(37))
    assert abs(y.var().item() - 1.0) < 4 * math.sqrt(2 / n)


def test_mala_samples_the_banana_exactly():
    # 2-D: n = 20,000 chains from exact draws, h = 0.05, 100 steps; TV on 24 x 18 bins below m + 4 s.
    b = POTENTIALS["banana"]
    n = 20_000
    edges = (np.linspace(-3.0, 3.0, 25), np.linspace(-1.5, 3.0, 19))
    x, rate = L.mala(b, b.sample(n, generator=gen(38)), 0.05, 100, generator=gen(39))
    p = L.gibbs_bin_probabilities(b, edges)
    m, s = L.tv_null_moments(p, n)
    assert L.histogram_tv_distance(x, edges, p) < m + 4 * s


# ---------------------------------------------------------------------------------------------
# the Fokker-Planck solver
# ---------------------------------------------------------------------------------------------


def _narrow_start(grid, centre=1.5, sd=0.1):
    dx = float(grid[1] - grid[0])
    p0 = torch.exp(-((grid - centre) ** 2) / (2 * sd**2))
    return p0 / (p0.sum() * dx), dx


def test_fokker_planck_conserves_mass_and_positivity():
    grid = torch.linspace(-2.5, 2.5, 201, dtype=torch.float64)
    dx = float(grid[1] - grid[0])
    p0 = torch.zeros_like(grid)
    p0[150] = 1 / dx  # a single cell: the harshest start for positivity
    dt = L.fokker_planck_max_dt(DW, grid)  # exactly at the limit
    for steps in (1, 7, 20_000):  # the step-by-step and the matrix-power paths
        p, traj = L.fokker_planck_1d(DW, grid, p0, dt, steps, thin=1 if steps < 10 else 1000, return_trajectory=True)
        assert (traj >= 0).all()
        # mass to round-off: a few ulps of 1, not growing with the number of steps
        assert (traj.sum(1) * dx - 1).abs().max() < 1e-13
    # both paths are the same scheme (to round-off)
    a = L.fokker_planck_1d(DW, grid, p0, dt, 2_000)
    b, _ = L.fokker_planck_1d(DW, grid, p0, dt, 2_000, thin=1, return_trajectory=True)
    assert (a - b).abs().max() < 1e-12


def test_fokker_planck_steady_state_is_the_discrete_gibbs_density():
    grid = torch.linspace(-2.5, 2.5, 251, dtype=torch.float64)
    p0, dx = _narrow_start(grid)
    gibbs = torch.exp(-DW.U(grid[:, None]))
    gibbs = gibbs / (gibbs.sum() * dx)
    dt = 0.9 * L.fokker_planck_max_dt(DW, grid)
    # the Scharfetter-Gummel flux vanishes on exp(-U_i): one step leaves it unchanged to round-off
    assert (L.fokker_planck_1d(DW, grid, gibbs, dt, 1) - gibbs).abs().max() < 1e-14
    # from a narrow start, t = 40 (32 relaxation times of 1.25: e^-32 ~ 1e-14) reaches it
    p = L.fokker_planck_1d(DW, grid, p0, dt, int(40 / dt))
    assert (p - gibbs).abs().max() < 1e-10


def test_fokker_planck_matches_the_ornstein_uhlenbeck_transition_with_second_order_accuracy():
    # U = x^2/2, T = 1: from N(m0, v0) the density at time t is N(m0 e^-t, 1 + (v0 - 1) e^-2t).
    # The scheme is second order in dx (with dt = dt_max / 10, the O(dt) time error is negligible), so
    # halving dx divides the error by ~4; the grid [-6, 6] keeps the zero-flux walls out of the way.
    gauss = L.Gaussian([0.0], 1.0)
    m0, v0, t = 1.0, 0.09, 0.5
    errors = []
    for n in (121, 241):
        grid = torch.linspace(-6, 6, n, dtype=torch.float64)
        p0 = torch.exp(-((grid - m0) ** 2) / (2 * v0)) / math.sqrt(2 * math.pi * v0)
        steps = math.ceil(t / (0.1 * L.fokker_planck_max_dt(gauss, grid)))
        p = L.fokker_planck_1d(gauss, grid, p0, t / steps, steps)
        m, v = m0 * math.exp(-t), 1 + (v0 - 1) * math.exp(-2 * t)
        exact = torch.exp(-((grid - m) ** 2) / (2 * v)) / math.sqrt(2 * math.pi * v)
        errors.append((p - exact).abs().max().item())
    assert errors[1] < 2e-4  # measured 1.0e-4 (peak density 0.6)
    assert 3.5 < errors[0] / errors[1] < 4.5


def test_fokker_planck_stability_limit_and_errors():
    grid = torch.linspace(-1, 1, 101, dtype=torch.float64)
    dx = float(grid[1] - grid[0])
    flat = torch.zeros_like(grid)
    # heat equation: dt_max = dx^2 / (2T); pure drift (T = 0): the CFL limit dx / max|U'|
    assert math.isclose(L.fokker_planck_max_dt(flat, grid, temperature=0.5), dx**2, rel_tol=1e-12)
    slope = 3.0 * grid
    assert math.isclose(L.fokker_planck_max_dt(slope, grid, temperature=0.0), dx / 3.0, rel_tol=1e-12)
    p0, _ = _narrow_start(grid, centre=0.0, sd=0.2)
    dt_max = L.fokker_planck_max_dt(DW, grid)
    L.fokker_planck_1d(DW, grid, p0, dt_max, 3)  # at the limit: accepted
    with pytest.raises(ValueError, match=rf"dt_max = {dt_max:.6g}"):
        L.fokker_planck_1d(DW, grid, p0, 1.01 * dt_max, 3)
    with pytest.raises(ValueError, match="uniformly spaced"):
        L.fokker_planck_1d(DW, grid**3, p0, dt_max, 3)
    with pytest.raises(ValueError, match="non-negative"):
        L.fokker_planck_1d(DW, grid, -p0, dt_max, 3)
    with pytest.raises(ValueError, match="grid's shape"):
        L.fokker_planck_1d(DW, grid, p0[:-1], dt_max, 3)
    with pytest.raises(ValueError, match="no mass"):
        L.fokker_planck_1d(DW, grid, torch.zeros_like(p0), dt_max, 3)


# ---------------------------------------------------------------------------------------------
# histogram distances
# ---------------------------------------------------------------------------------------------


def test_tv_null_moments_match_multinomial_simulation():
    # 4,000 multinomial draws: the SE of the simulated mean is sd / 63; the normal approximation's
    # mean must be within 4 such SE plus 1 % (its own approximation error), the sd within 10 %.
    p = L.gibbs_bin_probabilities(DW, EDGES)
    pp = np.append(p.numpy(), max(0.0, 1 - p.sum().item()))
    n = 5_000
    counts = np.random.default_rng(0).multinomial(n, pp, size=4_000) / n
    tv = 0.5 * np.abs(counts - pp).sum(1)
    m, s = L.tv_null_moments(p, n)
    assert abs(tv.mean() - m) < 4 * tv.std() / math.sqrt(len(tv)) + 0.01 * m
    assert abs(tv.std() - s) < 0.1 * s


def test_histogram_tv_distance_of_a_point_mass():
    # all samples in one bin: TV = 1 - p_k (half of (1 - p_k) + sum_{j != k} p_j + p_out)
    p = L.gibbs_bin_probabilities(DW, EDGES)
    k = 10
    x = torch.full((100, 1), 0.5 * (EDGES[k] + EDGES[k + 1]))
    assert math.isclose(L.histogram_tv_distance(x, EDGES, p), 1 - p[k].item(), rel_tol=1e-12)
    with pytest.raises(ValueError, match="do not match"):
        L.histogram_tv_distance(x, EDGES, p[:-1])


# ---------------------------------------------------------------------------------------------
# The chapter's animation (bdk.experiments.langevin.animate_relaxation)
# ---------------------------------------------------------------------------------------------


def test_animate_relaxation_has_the_asked_frames_and_closes_its_figure():
    import re

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.animation import FuncAnimation

    from bdk.experiments import langevin as E

    before = set(plt.get_fignums())
    anim = E.animate_relaxation(num_frames=4, num_particles=200, final_time=0.1, step_size=0.01,
                                num_cells=51, dpi=20)
    assert isinstance(anim, FuncAnimation)
    assert len(list(anim.new_frame_seq())) == 4
    assert len(anim.frame_times) == 4 and anim.frame_times[0] == 0.0
    assert np.all(np.diff(anim.frame_times) >= 0) and anim.frame_times[-1] == pytest.approx(0.1)
    assert set(plt.get_fignums()) == before  # closed: a notebook shows only the animation
    html = anim.to_jshtml()
    assert len(re.findall(r'frames\[\d+\] = "data:image/png', html)) == 4  # one embedded image per frame


@pytest.mark.parametrize("kwargs", [{"num_frames": 1}, {"num_particles": 0}, {"start": 3.0}])
def test_animate_relaxation_rejects_bad_arguments(kwargs):
    from bdk.experiments import langevin as E

    with pytest.raises(ValueError):
        E.animate_relaxation(**kwargs)


def test_animate_relaxation_html_image_has_the_first_frame_as_source():
    import re

    import matplotlib

    matplotlib.use("Agg")
    from bdk.experiments import langevin as E

    anim = E.animate_relaxation(num_frames=2, num_particles=100, final_time=0.05, step_size=0.01,
                                num_cells=41, dpi=20)
    html = anim.to_jshtml()
    tag = re.search(r"<img id=\"_anim_img[0-9a-f]+\"[^>]*>", html).group(0)
    first = re.search(r'frames\[0\] = "(data:image/png;base64,[^"]*)"', html).group(1)
    assert f'src="{first}"' in tag


# ---------------------------------------------------------------------------------------------
# the kernels and the chain driver
# ---------------------------------------------------------------------------------------------
# The samplers are kernels run by run_chains. The references below are frozen, independent copies of
# the loops the samplers had before they were built that way (the recorded experiments depend on
# their numbers): same operations, same random draws in the same order, so the results are equal bit
# for bit.


def _reference_euler_maruyama(grad_U, x0, h, num_steps, T, g):
    x = x0.clone()
    noise = torch.empty_like(x)
    for _ in range(num_steps):
        x.add_(grad_U(x), alpha=-h)
        if T > 0:
            noise.normal_(generator=g)
            x.add_(noise, alpha=math.sqrt(2.0 * T * h))
    return x


def _reference_mala(pot, x0, h, num_steps, T, g):
    x = x0.clone()
    u, grad = pot.U(x), pot.grad_U(x)
    s = math.sqrt(2.0 * T * h)
    noise, uniform = torch.empty_like(x), torch.empty(x.shape[0], dtype=x.dtype)
    accepted = torch.zeros((), dtype=torch.float64)
    for _ in range(num_steps):
        noise.normal_(generator=g)
        y = x - h * grad + s * noise
        uy, gy = pot.U(y), pot.grad_U(y)
        log_alpha = -(uy - u) / T - ((x - y + h * gy).pow(2).sum(1) - (s * noise).pow(2).sum(1)) / (4 * T * h)
        uniform.uniform_(generator=g)
        accept = torch.log(uniform) < log_alpha
        x, u, grad = torch.where(accept[:, None], y, x), torch.where(accept, uy, u), torch.where(accept[:, None], gy, grad)
        accepted += accept.sum()
    return x, accepted.item() / (x.shape[0] * num_steps)


def _reference_hmc(U, x0, step_size, num_leapfrog, num_samples, burn_in, thin, target_accept, g):
    def grad_U(theta):
        with torch.enable_grad():
            theta = theta.detach().requires_grad_(True)
            u = U(theta)
            (gr,) = torch.autograd.grad(u.sum(), theta)
        return u.detach(), gr

    C = x0.shape[0]
    theta = x0.clone()
    u, gr = grad_U(theta)
    log_eps = torch.full((C,), math.log(step_size), dtype=x0.dtype)
    kept, accept_sum, accept_n = [], 0.0, 0
    for it in range(burn_in + num_samples):
        eps = log_eps.exp()
        if it >= burn_in:
            eps = eps * (1 + 0.1 * (2 * torch.rand(C, dtype=x0.dtype, generator=g) - 1))
        e = eps.unsqueeze(1)
        p = torch.randn(theta.shape, dtype=x0.dtype, generator=g)
        h0 = u + 0.5 * p.pow(2).sum(-1)
        q, gq = theta, gr
        p = p - 0.5 * e * gq
        for k in range(num_leapfrog):
            q = q + e * p
            uq, gq = grad_U(q)
            if k < num_leapfrog - 1:
                p = p - e * gq
        p = p - 0.5 * e * gq
        log_alpha = torch.nan_to_num(h0 - (uq + 0.5 * p.pow(2).sum(-1)), nan=-math.inf).clamp(max=0.0)
        accept = torch.rand(C, dtype=x0.dtype, generator=g).log() < log_alpha
        theta = torch.where(accept.unsqueeze(1), q, theta)
        u = torch.where(accept, uq, u)
        gr = torch.where(accept.unsqueeze(1), gq, gr)
        alpha = log_alpha.exp()
        if it < burn_in:
            log_eps = log_eps + (alpha - target_accept) / math.sqrt(it + 1.0)
        else:
            accept_sum += float(alpha.mean())
            accept_n += 1
            if (it - burn_in + 1) % thin == 0:
                kept.append(theta.clone())
    return torch.stack(kept), accept_sum / max(accept_n, 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("temperature", [1.0, 0.3, 0.0])
def test_euler_maruyama_equals_the_reference_loop_bit_for_bit(dtype, temperature):
    x0 = torch.randn(300, 2, generator=gen(0), dtype=dtype)
    pot = POTENTIALS["banana"]
    got = L.euler_maruyama(pot, x0, 0.02, 250, temperature, gen(1))
    assert torch.equal(got, _reference_euler_maruyama(pot.grad_U, x0, 0.02, 250, temperature, gen(1)))


@pytest.mark.parametrize("name", ["double_well", "mixture", "banana"])
def test_mala_equals_the_reference_loop_bit_for_bit(name):
    pot = POTENTIALS[name]
    x0 = torch.randn(200, pot.dim, generator=gen(2), dtype=torch.float64)
    x, rate = L.mala(pot, x0, 0.3, 230, gen(3), temperature=0.7)
    x_ref, rate_ref = _reference_mala(pot, x0, 0.3, 230, 0.7, gen(3))
    assert torch.equal(x, x_ref) and rate == rate_ref


@pytest.mark.parametrize("burn_in, thin", [(0, 1), (30, 1), (25, 4)])
def test_hmc_equals_the_reference_loop_bit_for_bit(burn_in, thin):
    pot = POTENTIALS["banana"]
    x0 = torch.randn(64, 2, generator=gen(4), dtype=torch.float64)
    samples, acc = L.hmc(pot.U, x0, 0.3, 7, 40, burn_in=burn_in, thin=thin, generator=gen(5), show_progress=False)
    ref, acc_ref = _reference_hmc(pot.U, x0, 0.3, 7, 40, burn_in, thin, 0.8, gen(5))
    assert samples.shape == (40 // thin, 64, 2)
    assert torch.equal(samples, ref) and acc == acc_ref


def test_kernels_step_by_step_equal_the_samplers():
    pot = POTENTIALS["mixture"]
    x0 = torch.randn(100, 2, generator=gen(6))
    g = gen(7)
    x = x0.clone()
    for _ in range(40):
        x = L.euler_maruyama_step(x, pot.grad_U, 0.05, 0.5, g)
    assert torch.equal(x, L.euler_maruyama(pot, x0, 0.05, 40, 0.5, gen(7)))
    g = gen(8)
    x, u, grad, accepted = x0.clone(), pot.U(x0), pot.grad_U(x0), 0
    for _ in range(40):
        x, u, grad, accept = L.mala_step(x, u, grad, lambda y: (pot.U(y), pot.grad_U(y)), 0.2, 1.0, g)
        accepted += int(accept.sum())
    x_mala, rate = L.mala(pot, x0, 0.2, 40, gen(8))
    assert torch.equal(x, x_mala) and rate == accepted / (100 * 40)


def test_hmc_step_keeps_a_gaussian_and_accepts_exactly_integrable_moves():
    # U = |x|^2 / 2: the leapfrog energy error is O(eps^2), so at eps = 1e-3 every alpha is 1 to about
    # 1e-6; the returned U and grad U belong to the returned state; a rejected chain keeps its state.
    x = torch.randn(500, 3, generator=gen(9), dtype=torch.float64)
    value_and_grad = lambda q: (0.5 * q.pow(2).sum(1), q)  # noqa: E731
    u, grad = value_and_grad(x)
    eps = torch.full((500,), 1e-3, dtype=torch.float64)
    x1, u1, g1, accept, alpha = L.hmc_step(x, u, grad, value_and_grad, eps, 5, gen(10))
    assert alpha.min() > 0.999 and accept.float().mean() > 0.99
    assert torch.equal(u1, value_and_grad(x1)[0]) and torch.equal(g1, x1)
    assert torch.equal(x1[~accept], x[~accept])


def test_run_chains_burn_in_thinning_and_checks():
    # a counter chain: the state after step k is k, so the trajectory shows which steps were kept
    windows = []
    step = lambda x, k: x + 1  # noqa: E731
    final, traj = L.run_chains(step, torch.zeros(2, 1), 250, burn_in=20, thin=30, return_trajectory=True,
                               check=lambda x, first, last: windows.append((first, last)))
    assert final[0, 0] == 250
    assert traj[:, 0, 0].tolist() == [20, 50, 80, 110, 140, 170, 200, 230]
    assert windows == [(1, 100), (101, 200), (201, 250)]
    _, traj = L.run_chains(step, torch.zeros(2, 1), 6, thin=2, return_trajectory=True)
    assert traj[:, 0, 0].tolist() == [0, 2, 4, 6]
    # a tuple state: the trajectory holds its first entry
    _, traj = L.run_chains(lambda s, k: (s[0] + 1, s[1] * 2), (torch.zeros(1, 1), torch.ones(1)), 3,
                           return_trajectory=True)
    assert traj[:, 0, 0].tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="burn_in"):
        L.run_chains(step, torch.zeros(2, 1), 5, burn_in=6)
    bad = lambda x, k: x / 0 if k == 150 else x + 1  # noqa: E731
    with pytest.raises(FloatingPointError, match="between step 101 and step 200"):
        L.run_chains(bad, torch.ones(2, 1), 300, desc="counter")


def test_hmc_refuses_a_non_finite_start():
    x0 = torch.zeros(4, 2, dtype=torch.float64)
    x0[1, 0] = math.nan
    with pytest.raises(FloatingPointError, match="hmc: the chains became NaN or infinite"):
        L.hmc(POTENTIALS["banana"].U, x0, 0.3, 3, 5, show_progress=False)


def test_hmc_samples_a_gaussian():
    # U = (x1 - 1)^2 / 2 + x2^2 / 8: N((1, 0), diag(1, 4)). 2,000 independent chains; the last state of
    # each chain is one draw. SE of the mean: sqrt(1/2000) = 0.022 and sqrt(4/2000) = 0.045 (4 SE: 0.09, 0.18);
    # SE of the variance: var * sqrt(2/2000) = 0.032 and 0.126 (4 SE: 0.13, 0.51).
    g = gen(0)

    def U(theta):
        return 0.5 * (theta[:, 0] - 1) ** 2 + theta[:, 1] ** 2 / 8

    x0 = 5 * torch.randn(2000, 2, generator=g, dtype=torch.float64)
    samples, acc = L.hmc(U, x0, 0.5, 5, 30, burn_in=60, generator=g, show_progress=False)
    last = samples[-1]
    assert 0.6 < acc <= 1.0
    assert abs(last[:, 0].mean().item() - 1) < 0.09 and abs(last[:, 1].mean().item()) < 0.18
    assert abs(last[:, 0].var().item() - 1) < 0.13 and abs(last[:, 1].var().item() - 4) < 0.51
