r"""Experiments of chapter 4, "The Bayesian learning rule".

Every special case of the BLR is run twice on the same problem: once through :mod:`bdk.blr` and once
through an independently written classical implementation (NumPy loops with closed-form
derivatives for gradient descent, Newton and VON; ``torch.optim.RMSprop``/``Adam`` for the adaptive
methods), and the largest absolute difference over all iterates is reported. The problem is
Bayesian logistic regression without a bias on the 2-D toy set :func:`bdk.data.toy_classification_2d`
(so that the exact posterior can be computed on a grid), and Bayesian linear regression for the
conjugate case. Everything runs in float64: agreement to 1e-6 is then a statement about the
algorithms, not about rounding. These problems have 2 to 4 parameters, so they run on the CPU in
every profile (a GPU would only add latency); the functions of :mod:`bdk.blr` themselves follow the
device of the tensors they are given.
"""

from __future__ import annotations

import dataclasses
import math

import matplotlib.pyplot as plt
import numpy as np
import scipy.linalg
import torch

from .. import blr
from .._runtime import one_cpu_thread
from ..blr import GaussianBLR, LinearRegressionPotential, LogisticRegressionPotential
from ..data import toy_classification_2d, toy_regression_1d
from ..plotting import method_color
from ..timing import Stopwatch
from .registry import Experiment, register
from .tables import markdown_table

__all__ = [
    "BLRConfig",
    "CONFIGS",
    "logistic_problem",
    "conjugate_problem",
    "minibatch_indices",
    "classical_gradient_descent",
    "classical_newton",
    "classical_von",
    "torch_optimizer_trajectory",
    "special_cases",
    "adaptive_comparison",
    "von_vs_references",
    "grid_posterior",
    "conjugate_experiment",
    "von_optimizer_experiment",
    "plot_special_case",
    "plot_special_cases",
    "plot_conjugate",
    "plot_adaptive",
    "plot_posterior_comparison",
    "plot_von_convergence",
    "summary_table",
    "markdown_table",
    "adaptive_table",
    "von_report",
    "optimizer_table",
    "von_references_record",
    "von_optimizer_record",
]

DTYPE = torch.float64


@dataclasses.dataclass(frozen=True)
class BLRConfig:
    """Sizes of the chapter-4 experiments (one instance per profile)."""

    num_per_class: int = 10  # toy set: 2 * num_per_class points
    data_seed: int = 0
    prior_precision: float = 0.25  # prior N(0, 4 I) on the two weights
    start: tuple = (-0.5, 0.5)  # where every special case starts (unit-step Newton diverges from (-1, 1))
    gd_lr: float = 0.05
    gd_steps: int = 60
    newton_steps: int = 8
    adaptive_steps: int = 300
    batch_size: int = 5
    rmsprop_lr: float = 0.02
    rmsprop_alpha: float = 0.99
    rmsprop_eps: float = 1e-8
    adam_lr: float = 0.05
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    von_compare_lr: float = 0.2
    von_compare_steps: int = 50
    von_compare_samples: int = 5
    von_lr0: float = 0.2  # VON rate schedule rho_t = von_lr0 / (1 + t / von_lr_decay)
    von_lr_decay: float = 50.0
    von_steps: int = 500
    von_samples: int = 10
    von_chains: int = 6
    quadrature_points: int = 30
    grid_points: int = 241
    conj_num_data: int = 20
    conj_features: int = 4
    conj_lr: float = 0.5
    conj_steps: int = 30
    optim_compare_steps: int = 100
    optim_steps: int = 800
    optim_lr0: float = 0.1
    optim_lr_decay: float = 50.0
    optim_hess_init: float = 0.1
    optim_runs: int = 8
    seed: int = 0


CONFIGS = {
    "quick": BLRConfig(),
    "paper": BLRConfig(von_steps=5000, von_chains=16, grid_points=601, optim_steps=20000, optim_runs=32),
}


# --------------------------------------------------------------------------------------------------
# Problems
# --------------------------------------------------------------------------------------------------


def logistic_problem(cfg: BLRConfig) -> LogisticRegressionPotential:
    """Logistic regression without a bias on :func:`bdk.data.toy_classification_2d` (float64, CPU)."""
    x, y = toy_classification_2d(cfg.num_per_class, seed=cfg.data_seed)
    return LogisticRegressionPotential(x.to(DTYPE), y.to(DTYPE), prior_precision=cfg.prior_precision)


def conjugate_problem(cfg: BLRConfig) -> LinearRegressionPotential:
    """Bayesian linear regression on the cubic toy set, features ``(x/4)^k``, ``k = 0..conj_features-1``."""
    x, y = toy_regression_1d(num_points=cfg.conj_num_data, noise_std=3.0, seed=cfg.data_seed)
    u = x.to(DTYPE)[:, 0] / 4.0
    features = torch.stack([u**k for k in range(cfg.conj_features)], dim=1)
    return LinearRegressionPotential(features, y.to(DTYPE), noise_precision=1.0 / 9.0, prior_precision=1.0)


def _likelihood(pot: LogisticRegressionPotential) -> LogisticRegressionPotential:
    """The same model without its prior term (for BLR runs that add the prior in closed form)."""
    return LogisticRegressionPotential(pot.x, pot.y, prior_precision=0.0)


def minibatch_indices(num_data: int, batch_size: int, num_steps: int, seed: int) -> torch.Tensor:
    """Indices ``(num_steps, batch_size)``: epochs of seeded random permutations, cut into minibatches."""
    if num_data % batch_size:
        raise ValueError(f"batch_size {batch_size} must divide num_data {num_data}.")
    gen = torch.Generator().manual_seed(seed)
    per_epoch = num_data // batch_size
    epochs = -(-num_steps // per_epoch)
    perms = torch.cat([torch.randperm(num_data, generator=gen) for _ in range(epochs)])
    return perms[: num_steps * batch_size].reshape(num_steps, batch_size)


# --------------------------------------------------------------------------------------------------
# Classical algorithms, written independently of bdk.blr (NumPy, closed-form derivatives)
# --------------------------------------------------------------------------------------------------


def _np_logistic(x: np.ndarray, y: np.ndarray, prior_precision: float):
    def grad(theta):
        p = 1.0 / (1.0 + np.exp(-(x @ theta)))
        return x.T @ (p - y) + prior_precision * theta

    def hess(theta):
        p = 1.0 / (1.0 + np.exp(-(x @ theta)))
        return (x * (p * (1 - p))[:, None]).T @ x + prior_precision * np.eye(x.shape[1])

    return grad, hess


def classical_gradient_descent(x, y, prior_precision, theta0, lr, num_steps) -> np.ndarray:
    r"""Gradient descent :math:`\theta \leftarrow \theta - \alpha \nabla U(\theta)` on the logistic potential; returns ``(num_steps+1, d)``."""
    grad, _ = _np_logistic(np.asarray(x), np.asarray(y), prior_precision)
    theta = np.array(theta0, dtype=np.float64)
    out = [theta.copy()]
    for _ in range(num_steps):
        theta = theta - lr * grad(theta)
        out.append(theta.copy())
    return np.array(out)


def classical_newton(x, y, prior_precision, theta0, num_steps) -> np.ndarray:
    r"""Newton's method :math:`\theta \leftarrow \theta - [\nabla^2 U]^{-1}\nabla U`; returns ``(num_steps+1, d)``."""
    grad, hess = _np_logistic(np.asarray(x), np.asarray(y), prior_precision)
    theta = np.array(theta0, dtype=np.float64)
    out = [theta.copy()]
    for _ in range(num_steps):
        theta = theta - np.linalg.solve(hess(theta), grad(theta))
        out.append(theta.copy())
    return np.array(out)


def classical_von(x, y, prior_precision, mean0, precision0, lr, num_steps, num_samples, seed) -> dict:
    r"""VON as written by Khan et al. (2018), per example, with the draws of ``torch.Generator(seed)``.

    With :math:`\bar\ell = \frac1N\sum_i \ell_i`, :math:`\tilde\lambda = \lambda/N` and
    :math:`\Sigma = [N(\tilde S + \tilde\lambda I)]^{-1}`:

    .. math::
        \tilde S \leftarrow (1-\beta)\tilde S + \beta\,\widehat{\nabla^2\bar\ell}, \qquad
        \mu \leftarrow \mu - \beta (\tilde S + \tilde\lambda I)^{-1} (\widehat{\nabla\bar\ell} + \tilde\lambda\mu).

    The standard normal draws come from ``torch.randn`` (so both implementations see the same
    noise); everything else is NumPy/SciPy. Returns ``{"mean": (T+1, d), "precision": (T+1, d, d)}``
    with the precision in the BLR's scale :math:`N(\tilde S + \tilde\lambda I)`.
    """
    x, y = np.asarray(x), np.asarray(y)
    n, d = x.shape
    lam = prior_precision / n

    def avg_grad_hess(theta):  # data part of the average loss, at each row of theta (k, d)
        p = 1.0 / (1.0 + np.exp(-(theta @ x.T)))  # (k, n)
        g = (p - y) @ x / n
        w = p * (1 - p)
        h = np.einsum("kn,ni,nj->kij", w, x, x) / n
        return g.mean(0), h.mean(0)

    gen = torch.Generator().manual_seed(seed)
    mu = np.array(mean0, dtype=np.float64)
    s_tilde = np.array(precision0, dtype=np.float64) / n - lam * np.eye(d)
    means, precs = [mu.copy()], [n * (s_tilde + lam * np.eye(d))]
    for _ in range(num_steps):
        eps = torch.randn((num_samples, d), generator=gen, dtype=torch.float64).numpy()
        chol = np.linalg.cholesky(n * (s_tilde + lam * np.eye(d)))  # precision = chol chol^T
        theta = mu + scipy.linalg.solve_triangular(chol.T, eps.T, lower=False).T
        g, h = avg_grad_hess(theta)
        s_tilde = (1 - lr) * s_tilde + lr * h
        mu = mu - lr * np.linalg.solve(s_tilde + lam * np.eye(d), g + lam * mu)
        means.append(mu.copy())
        precs.append(n * (s_tilde + lam * np.eye(d)))
    return {"mean": np.array(means), "precision": np.array(precs)}


def torch_optimizer_trajectory(potential, theta0, batches, name: str, **hyper) -> np.ndarray:
    r"""Run ``torch.optim.RMSprop`` or ``torch.optim.Adam`` on the average minibatch loss :math:`\hat U/N`.

    Returns the iterates ``(num_steps+1, d)``.
    """
    theta = torch.nn.Parameter(theta0.clone())
    opt = {"RMSprop": torch.optim.RMSprop, "Adam": torch.optim.Adam}[name]([theta], **hyper)
    out = [theta.detach().clone()]
    for idx in batches:
        opt.zero_grad()
        loss = potential.U(theta, batch=idx) / potential.num_data
        loss.backward()
        opt.step()
        out.append(theta.detach().clone())
    return torch.stack(out).numpy()


# --------------------------------------------------------------------------------------------------
# The special cases, side by side
# --------------------------------------------------------------------------------------------------


def _max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def adaptive_comparison(cfg: BLRConfig, potential: LogisticRegressionPotential | None = None) -> dict:
    """The diagonal BLR with squared gradients against ``torch.optim.RMSprop`` and ``torch.optim.Adam``.

    Returns a dict with one entry per comparison, each holding the ``blr`` and the reference
    iterates, the per-step largest absolute difference ``diff`` and its maximum ``max_abs_diff``.
    """
    pot = potential if potential is not None else logistic_problem(cfg)
    n = pot.num_data
    theta0 = torch.tensor(cfg.start, dtype=DTYPE)
    batches = minibatch_indices(n, cfg.batch_size, cfg.adaptive_steps, cfg.seed)

    def run(**choices):
        state = blr.AdaptiveState.init(theta0, 0.0)
        out = [state.mean]
        for idx in batches:
            grad = pot.grad_U(state.mean, batch=idx) / n  # gradient of the average minibatch loss
            state = blr.adaptive_blr_step(state, grad, **choices)
            out.append(state.mean)
        return torch.stack(out).numpy()

    rms_ref = torch_optimizer_trajectory(
        pot, theta0, batches, "RMSprop", lr=cfg.rmsprop_lr, alpha=cfg.rmsprop_alpha, eps=cfg.rmsprop_eps
    )
    adam_ref = torch_optimizer_trajectory(
        pot, theta0, batches, "Adam", lr=cfg.adam_lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps
    )
    rms_blr = run(lr=cfg.rmsprop_lr, beta2=cfg.rmsprop_alpha, sqrt=True, eps=cfg.rmsprop_eps)
    adam_blr = run(lr=cfg.adam_lr, beta1=cfg.adam_beta1, beta2=cfg.adam_beta2, sqrt=True, eps=cfg.adam_eps, debias=True)
    # The BLR's own choice: no square root; the per-example prior precision lambda/N in place of eps.
    adam_nosqrt = run(
        lr=cfg.adam_lr, beta1=cfg.adam_beta1, beta2=cfg.adam_beta2, sqrt=False, eps=cfg.prior_precision / n, debias=True
    )
    out = {}
    for key, a, b in (
        ("RMSprop", rms_blr, rms_ref),
        ("Adam", adam_blr, adam_ref),
        ("BLR without square root vs Adam", adam_nosqrt, adam_ref),
    ):
        diff = np.abs(a - b).max(axis=1)
        out[key] = {"blr": a, "reference": b, "diff": diff, "max_abs_diff": float(diff.max())}
    return out


def special_cases(cfg: BLRConfig) -> dict:
    """Run every special case through :mod:`bdk.blr` and through its classical implementation.

    Returns ``{"rows": [...], "cases": {...}, "adaptive": ..., "potential": ...}``; each row names the
    case, the BLR assumption, the reference, the number of steps and the largest absolute
    difference over all iterates (and all coordinates; for VON also over the precision matrices).
    """
    with one_cpu_thread("cpu"):
        pot = logistic_problem(cfg)
        x, y = pot.x.numpy(), pot.y.numpy()
        d = pot.dim
        theta0 = torch.tensor(cfg.start, dtype=DTYPE)
        cases = {}

        # gradient descent: q = N(m, I) with the precision held fixed, delta method, rho = alpha
        start = GaussianBLR(theta0, torch.eye(d, dtype=DTYPE))
        _, traj = blr.run_blr(start, pot.grad_U, lr=cfg.gd_lr, num_steps=cfg.gd_steps, update_precision=False)
        ref = classical_gradient_descent(x, y, cfg.prior_precision, theta0.numpy(), cfg.gd_lr, cfg.gd_steps)
        cases["gradient descent"] = {"blr": traj["mean"].numpy(), "reference": ref}

        # Newton: full precision, delta method, rho = 1
        _, traj = blr.run_blr(start, pot.grad_U, pot.hess_U, lr=1.0, num_steps=cfg.newton_steps)
        ref = classical_newton(x, y, cfg.prior_precision, theta0.numpy(), cfg.newton_steps)
        cases["Newton"] = {"blr": traj["mean"].numpy(), "reference": ref}

        # VON: full precision, Monte Carlo, the same draws as Khan et al.'s per-example form; the
        # prior's expectations in closed form (as they do), the likelihood's by Monte Carlo
        lik = _likelihood(pot)
        gen = torch.Generator().manual_seed(cfg.seed)
        _, traj = blr.run_blr(
            start, lik.grad_U, lik.hess_U, lr=cfg.von_compare_lr, num_steps=cfg.von_compare_steps,
            method="mc", num_samples=cfg.von_compare_samples, generator=gen, prior_precision=pot.prior_precision,
        )
        ref = classical_von(
            x, y, cfg.prior_precision, theta0.numpy(), np.eye(d), cfg.von_compare_lr, cfg.von_compare_steps,
            cfg.von_compare_samples, cfg.seed,
        )
        cases["VON"] = {
            "blr": traj["mean"].numpy(),
            "reference": ref["mean"],
            "precision_diff": _max_diff(traj["precision"].numpy(), ref["precision"]),
        }

        adaptive = adaptive_comparison(cfg, pot)

    rows = [
        {
            "special case": "gradient descent",
            "BLR assumption": "q = N(m, I), precision fixed; delta method; rho = alpha",
            "classical reference": "NumPy loop theta -= alpha grad U",
            "steps": cfg.gd_steps,
            "max |difference|": _max_diff(cases["gradient descent"]["blr"], cases["gradient descent"]["reference"]),
        },
        {
            "special case": "Newton's method",
            "BLR assumption": "full precision; delta method; rho = 1",
            "classical reference": "NumPy loop theta -= H^-1 grad U",
            "steps": cfg.newton_steps,
            "max |difference|": _max_diff(cases["Newton"]["blr"], cases["Newton"]["reference"]),
        },
        {
            "special case": "RMSprop",
            "BLR assumption": "diagonal; delta; Hessian ~ g^2; + square root, eps",
            "classical reference": "torch.optim.RMSprop",
            "steps": cfg.adaptive_steps,
            "max |difference|": adaptive["RMSprop"]["max_abs_diff"],
        },
        {
            "special case": "Adam",
            "BLR assumption": "as RMSprop; + momentum, debiasing",
            "classical reference": "torch.optim.Adam",
            "steps": cfg.adaptive_steps,
            "max |difference|": adaptive["Adam"]["max_abs_diff"],
        },
        {
            "special case": "VON (mean)",
            "BLR assumption": f"full precision; Monte Carlo, {cfg.von_compare_samples} draws; rho = {cfg.von_compare_lr}",
            "classical reference": "NumPy VON, Khan et al. (2018) per-example form",
            "steps": cfg.von_compare_steps,
            "max |difference|": _max_diff(cases["VON"]["blr"], cases["VON"]["reference"]),
        },
        {
            "special case": "VON (precision)",
            "BLR assumption": "(same run)",
            "classical reference": "(same run)",
            "steps": cfg.von_compare_steps,
            "max |difference|": cases["VON"]["precision_diff"],
        },
    ]
    return {"rows": rows, "cases": cases, "adaptive": adaptive, "potential": pot}


# --------------------------------------------------------------------------------------------------
# VON with Monte Carlo on logistic regression against the references
# --------------------------------------------------------------------------------------------------


def grid_posterior(potential, center: torch.Tensor, half_width: float, num_points: int) -> dict:
    r"""The exact 2-D posterior :math:`e^{-U}/Z` on a square grid, with its mean and covariance.

    Returns ``{"a", "b"}`` (1-D grid coordinates), ``"density"`` ``(num_points, num_points)`` (indexed
    ``[i_a, i_b]``, normalised to integrate to 1), ``"mean"`` ``(2,)``, ``"covariance"`` ``(2, 2)`` and
    ``"edge_mass"`` (the probability on the grid's border cells: it must be negligible).
    """
    a = torch.linspace(center[0] - half_width, center[0] + half_width, num_points, dtype=DTYPE)
    b = torch.linspace(center[1] - half_width, center[1] + half_width, num_points, dtype=DTYPE)
    A, B = torch.meshgrid(a, b, indexing="ij")
    theta = torch.stack([A.reshape(-1), B.reshape(-1)], dim=1)
    logp = -potential.U(theta)
    w = torch.exp(logp - logp.max())
    w = w / w.sum()
    mean = w @ theta
    diff = theta - mean
    cov = diff.T @ (diff * w[:, None])
    cell = (a[1] - a[0]) * (b[1] - b[0])
    grid = w.reshape(num_points, num_points)
    edge = grid[[0, -1], :].sum() + grid[1:-1, [0, -1]].sum()
    return {"a": a, "b": b, "density": grid / cell, "mean": mean, "covariance": cov, "edge_mass": float(edge)}


def von_vs_references(cfg: BLRConfig) -> dict:
    """VON with Monte Carlo draws on the 2-parameter logistic regression, and four references.

    The references are: the exact optimum of the Gaussian variational objective (L-BFGS on the
    objective with Gauss-Hermite quadrature, :func:`bdk.blr.gaussian_vi_optimum`), the BLR with
    quadrature expectations run to its fixed point, the Laplace approximation (Newton), and the exact
    posterior on a grid. VON runs ``von_chains`` independent chains with the Robbins-Monro rate
    :math:`\\rho_t = \\rho_0 / (1 + t/\\tau)`; each chain's estimate averages the natural
    parameters over the second half of its run; the standard error is the spread across chains.
    """
    with one_cpu_thread("cpu"), Stopwatch() as clock:
        pot = logistic_problem(cfg)
        d = pot.dim
        zero = torch.zeros(d, dtype=DTYPE)
        laplace = blr.laplace_approximation(pot.grad_U, pot.hess_U, zero)
        vi = blr.gaussian_vi_optimum(pot.U, laplace, quadrature_points=cfg.quadrature_points)
        quad_state, quad_traj = blr.run_blr(
            laplace, pot.grad_U, pot.hess_U, lr=1.0, num_steps=30, method="quadrature",
            quadrature_points=cfg.quadrature_points,
        )
        half_width = 7.0 * float(laplace.covariance().diagonal().sqrt().max())
        grid = grid_posterior(pot, laplace.mean, half_width, cfg.grid_points)

        def rate(t):
            return cfg.von_lr0 / (1.0 + t / cfg.von_lr_decay)

        start = GaussianBLR(zero, torch.eye(d, dtype=DTYPE))
        lik = _likelihood(pot)
        chains = []
        for c in range(cfg.von_chains):
            gen = torch.Generator().manual_seed(cfg.seed + 1000 + c)
            _, traj = blr.run_blr(
                start, lik.grad_U, lik.hess_U, lr=rate, num_steps=cfg.von_steps, method="mc",
                num_samples=cfg.von_samples, generator=gen, prior_precision=pot.prior_precision,
            )
            chains.append(traj)
        tail = slice(cfg.von_steps // 2 + 1, None)
        est_means, est_covs = [], []
        for traj in chains:
            prec = traj["precision"][tail].mean(0)
            eta1 = (traj["precision"][tail] @ traj["mean"][tail][..., None])[..., 0].mean(0)
            state = GaussianBLR.from_natural(eta1, -0.5 * prec)
            est_means.append(state.mean)
            est_covs.append(state.covariance())
        est_means, est_covs = torch.stack(est_means), torch.stack(est_covs)
        r = cfg.von_chains
        von_mean, von_cov = est_means.mean(0), est_covs.mean(0)
        se_mean = est_means.std(0) / math.sqrt(r) if r > 1 else torch.full_like(von_mean, float("nan"))
        se_cov = est_covs.std(0) / math.sqrt(r) if r > 1 else torch.full_like(von_cov, float("nan"))
    seconds = clock.seconds
    return {
        "potential": pot,
        "laplace": laplace,
        "vi": vi,
        "blr_quadrature": quad_state,
        "blr_quadrature_trajectory": quad_traj,
        "grid": grid,
        "von_chains": chains,
        "von_mean": von_mean,
        "von_covariance": von_cov,
        "von_se_mean": se_mean,
        "von_se_covariance": se_cov,
        "von_state": GaussianBLR(von_mean, torch.linalg.inv(von_cov)),
        "seconds": seconds,
    }


def summary_table(res: dict) -> list[dict]:
    """Rows (one per method) of mean and covariance entries for :func:`von_vs_references`'s result."""

    def row(name, mean, cov, se_mean=None, se_cov=None):
        out = {"method": name, "m1": float(mean[0]), "m2": float(mean[1]),
               "Σ11": float(cov[0, 0]), "Σ12": float(cov[0, 1]), "Σ22": float(cov[1, 1])}
        if se_mean is not None:
            out["m1"], out["m2"] = (f"{out['m1']:.3f} ± {float(se_mean[0]):.3f}",
                                    f"{out['m2']:.3f} ± {float(se_mean[1]):.3f}")
            for key, (i, j) in (("Σ11", (0, 0)), ("Σ12", (0, 1)), ("Σ22", (1, 1))):
                out[key] = f"{out[key]:.3f} ± {float(se_cov[i, j]):.3f}"
        return out

    return [
        row("VON (Monte Carlo, ± 1 SE)", res["von_mean"], res["von_covariance"], res["von_se_mean"],
            res["von_se_covariance"]),
        row("BLR, quadrature", res["blr_quadrature"].mean, res["blr_quadrature"].covariance()),
        row("Gaussian VI optimum", res["vi"].mean, res["vi"].covariance()),
        row("Laplace", res["laplace"].mean, res["laplace"].covariance()),
        row("exact posterior (grid)", res["grid"]["mean"], res["grid"]["covariance"]),
    ]


def adaptive_table(special: dict, cfg) -> list[dict]:
    """Rows of the RMSprop/Adam comparison (BLR with the named choices against ``torch.optim``). Chapter 4."""
    adaptive = special["adaptive"]
    rows = [{"BLR variant": f"{k}'s choices", "compared with": f"torch.optim.{k}",
             "steps": cfg.adaptive_steps, "max |diff|": adaptive[k]["max_abs_diff"]} for k in ("RMSprop", "Adam")]
    rows.append({"BLR variant": "no square root, δ = λ/N for ε", "compared with": "torch.optim.Adam",
                 "steps": cfg.adaptive_steps,
                 "max |diff|": adaptive["BLR without square root vs Adam"]["max_abs_diff"]})
    return rows


def von_report(res: dict) -> str:
    """VON against the Gaussian VI optimum in standard errors, and the other references. Chapter 4."""
    vi, quad, lap, g = res["vi"], res["blr_quadrature"], res["laplace"], res["grid"]
    dm = (res["von_mean"] - vi.mean) / res["von_se_mean"]
    dc = ((res["von_covariance"] - vi.covariance()) / res["von_se_covariance"])[[0, 0, 1], [0, 1, 1]]
    quad_diff = max((quad.mean - vi.mean).abs().max(), (quad.covariance() - vi.covariance()).abs().max())
    ratio = (vi.covariance().diagonal() / g["covariance"].diagonal()).numpy().round(3)
    return "\n".join([
        "VON - VI optimum, in standard errors:",
        f"  mean (m1, m2):                {dm.numpy().round(2)}",
        f"  covariance (Σ11, Σ12, Σ22):   {dc.numpy().round(2)}",
        f"BLR with quadrature vs VI optimum: max |diff| = {quad_diff:.1e}",
        f"Laplace vs VI optimum: means differ by {(lap.mean - vi.mean).abs().max():.3f}",
        f"VI optimum vs exact: means differ by {(vi.mean - g['mean']).abs().max():.4f}",
        f"VI variances / exact variances: {ratio}",
    ])


def optimizer_table(res: dict) -> list[dict]:
    """Rows comparing the ``VON`` optimizer's runs with the mean-field optimum. Chapter 4."""
    mf = res["mean_field"]
    values = zip(["m1", "m2", "precision 1", "precision 2"],
                 torch.cat([res["mean"], res["precision"]]), torch.cat([res["se_mean"], res["se_precision"]]),
                 torch.cat([mf.mean, mf.precision]))
    return [{"quantity": name, f"VON ({res['num_runs']} runs)": float(v), "± 1 SE": float(se),
             "mean-field optimum": float(t)} for name, v, se, t in values]


# --------------------------------------------------------------------------------------------------
# Conjugate computation and the VON optimizer
# --------------------------------------------------------------------------------------------------


def conjugate_experiment(cfg: BLRConfig) -> dict:
    r"""One BLR step with :math:`\rho = 1` on Bayesian linear regression, and the geometric approach for :math:`\rho < 1`.

    Starts from a random Gaussian (seeded). Returns the errors of the one-step result against the
    closed-form posterior, and, for ``rho = conj_lr``, the distance of the natural parameters to the
    posterior's after each step together with the prediction :math:`(1-\rho)^t \times` the initial distance.
    """
    with one_cpu_thread("cpu"):
        pot = conjugate_problem(cfg)
        d = pot.dim
        exact = pot.posterior()
        gen = torch.Generator().manual_seed(cfg.seed)
        a = torch.randn(d, d, generator=gen, dtype=DTYPE)
        start = GaussianBLR(3.0 * torch.randn(d, generator=gen, dtype=DTYPE), a @ a.T + 0.5 * torch.eye(d, dtype=DTYPE))
        one = blr.blr_step(start, pot.grad_U, pot.hess_U, lr=1.0)
        _, traj = blr.run_blr(start, pot.grad_U, pot.hess_U, lr=cfg.conj_lr, num_steps=cfg.conj_steps)
        eta_exact = torch.cat([exact.natural_parameters()[0], exact.natural_parameters()[1].reshape(-1)])

        def eta(mean, prec):
            return torch.cat([prec @ mean, -0.5 * prec.reshape(-1)])

        dist = torch.stack([(eta(m, p) - eta_exact).abs().max() for m, p in zip(traj["mean"], traj["precision"])])
        steps = torch.arange(cfg.conj_steps + 1, dtype=DTYPE)
        predicted = dist[0] * (1 - cfg.conj_lr) ** steps
    return {
        "mean_error": float((one.mean - exact.mean).abs().max()),
        "precision_error": float((one.precision - exact.precision).abs().max()),
        "covariance_error": float((one.covariance() - exact.covariance()).abs().max()),
        "exact": exact,
        "one_step": one,
        "start": start,
        "distance": dist.numpy(),
        "predicted": predicted.numpy(),
        "geometric_max_rel_error": float(((dist[1:] - predicted[1:]).abs() / predicted[1:]).max()),
    }


def _von_module_run(pot, cfg, num_steps, lr, seed, schedule=None, keep_from=0, num_runs=1):
    """Train ``nn.Linear(2, num_runs, bias=False)`` with :class:`bdk.blr.VON` on the logistic problem.

    Each output unit is a separate logistic regression on the same data (the loss is the sum over
    units of each unit's average negative log likelihood, and VON acts elementwise), so the rows of
    the weight are ``num_runs`` independent VON runs computed in one pass.
    Returns means and precisions of shape ``(num_steps - keep_from, num_runs, 2)``.
    """
    n, d = pot.num_data, pot.dim
    model = torch.nn.Linear(d, num_runs, bias=False).to(DTYPE)
    with torch.no_grad():
        model.weight.zero_()
    gen = torch.Generator().manual_seed(seed)
    opt = blr.VON(
        model.parameters(), lr=lr, ess=n, hess_init=cfg.optim_hess_init, weight_decay=pot.prior_precision / n,
        generator=gen,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, schedule) if schedule is not None else None
    targets = pot.y[:, None].expand(n, num_runs)
    means, precisions = [], []
    for t in range(num_steps):
        with opt.sampled_params(train=True):
            # per unit: the average negative log likelihood (IVON's convention); the prior is weight_decay
            logits = model(pot.x)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / n
            loss.backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()
        if t >= keep_from:
            means.append(model.weight.detach().clone())
            precisions.append(opt.posterior_std()[0].detach().pow(-2))
    return torch.stack(means), torch.stack(precisions)


def von_optimizer_experiment(cfg: BLRConfig) -> dict:
    r"""The :class:`bdk.blr.VON` optimizer on an ``nn.Linear`` logistic regression (chapter 4).

    1. Exactness: its iterates against :func:`bdk.blr.von_step` on a diagonal :class:`GaussianBLR`
       with ``hess_fn="reparam"`` and the same draws (``optim_compare_steps`` steps).
    2. Accuracy: a long run with the Robbins-Monro rate :math:`\rho_t = \rho_0/(1 + t/\tau)`, its
       mean and precision averaged over the second half, against the best diagonal Gaussian (the
       mean-field optimum: the fixed point of the diagonal BLR with quadrature expectations);
       ``optim_runs`` independent runs (one module, see ``_von_module_run``) give the standard error.
    """
    with one_cpu_thread("cpu"):
        pot = logistic_problem(cfg)
        n, d = pot.num_data, pot.dim
        lik = _likelihood(pot)
        # 1. exactness against the functional diagonal VON with the same draws
        ref_means, ref_precs = _von_module_run(pot, cfg, cfg.optim_compare_steps, cfg.optim_lr0, cfg.seed + 7)
        ref_means, ref_precs = ref_means[:, 0], ref_precs[:, 0]
        prec0 = n * (cfg.optim_hess_init + pot.prior_precision / n)
        state = GaussianBLR(torch.zeros(d, dtype=DTYPE), torch.full((d,), prec0, dtype=DTYPE))
        gen = torch.Generator().manual_seed(cfg.seed + 7)
        _, traj = blr.run_blr(
            state, lik.grad_U, "reparam", lr=cfg.optim_lr0, num_steps=cfg.optim_compare_steps, method="mc",
            num_samples=1, generator=gen, prior_precision=pot.prior_precision,
        )
        mean_diff = _max_diff(traj["mean"][1:], ref_means)
        prec_rel_diff = float(((traj["precision"][1:] - ref_precs) / ref_precs).abs().max())
        # 2. the mean-field optimum: diagonal BLR, quadrature expectations, rho = 1, to its fixed point
        mf, mf_traj = blr.run_blr(
            GaussianBLR(torch.zeros(d, dtype=DTYPE), torch.ones(d, dtype=DTYPE)), lik.grad_U, lik.hess_U, lr=1.0,
            num_steps=60, method="quadrature", quadrature_points=cfg.quadrature_points, prior_precision=pot.prior_precision,
        )
        half = cfg.optim_steps // 2
        means, precs = _von_module_run(
            pot, cfg, cfg.optim_steps, cfg.optim_lr0, cfg.seed + 11,
            schedule=lambda t: 1.0 / (1.0 + t / cfg.optim_lr_decay), keep_from=half, num_runs=cfg.optim_runs,
        )
        run_means, run_precs = means.mean(0), precs.mean(0)  # (num_runs, d): each run's average over the second half
        r = cfg.optim_runs
    return {
        "exact_mean_diff": mean_diff,
        "exact_precision_rel_diff": prec_rel_diff,
        "compare_steps": cfg.optim_compare_steps,
        "mean": run_means.mean(0),
        "precision": run_precs.mean(0),
        "se_mean": run_means.std(0) / math.sqrt(r),
        "se_precision": run_precs.std(0) / math.sqrt(r),
        "num_runs": r,
        "mean_field": mf,
        "mean_field_step_change": float((mf_traj["mean"][-1] - mf_traj["mean"][-2]).abs().max()),
        "mean_trajectory": means,
    }


# --------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------


def _posterior_background(ax, grid, levels=8):
    a, b, dens = grid["a"].numpy(), grid["b"].numpy(), grid["density"].numpy()
    cs = ax.contourf(a, b, dens.T, levels=levels, cmap=plt.cm.Greys, alpha=0.8)
    return cs


def _zoom(ax, grid, points=(), sds=3.5):
    """Limit the axes to the posterior's bulk (``sds`` standard deviations) and the given points."""
    mean, sd = grid["mean"].numpy(), grid["covariance"].diagonal().sqrt().numpy()
    lo, hi = mean - sds * sd, mean + sds * sd
    for pts in points:
        pts = np.asarray(pts)
        lo, hi = np.minimum(lo, pts.min(0) - 0.2), np.maximum(hi, pts.max(0) + 0.2)
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])


_CASE_STYLE = {
    "gradient descent": ("SGD", "gradient descent"),
    "Newton": ("exact", "Newton's method"),
    "VON": ("IVON", "VON with Monte Carlo draws"),
}


def plot_special_case(special: dict, key: str, grid: dict, ax=None):
    """One special case: the classical iterates (line) and the BLR's (circles) over the exact posterior."""
    if key not in _CASE_STYLE:
        raise ValueError(f"key must be one of {sorted(_CASE_STYLE)}, got {key!r}.")
    color_key, title = _CASE_STYLE[key]
    if ax is None:
        _, ax = plt.subplots(figsize=(5.2, 4.2))
    case = special["cases"][key]
    _posterior_background(ax, grid)
    ref, ours = case["reference"], case["blr"]
    ax.plot(ref[:, 0], ref[:, 1], "-", color=method_color(color_key), lw=3, alpha=0.7, label="classical implementation")
    ax.plot(ours[:, 0], ours[:, 1], "o", mfc="none", mec="#D55E00", ms=6, mew=1.2, label="BLR (bdk.blr)")
    ax.plot(ref[0, 0], ref[0, 1], "ks", ms=6, label="start")
    _zoom(ax, grid, (ref,), sds=2.5)
    ax.set_xlabel(r"$\theta_1$")
    ax.set_ylabel(r"$\theta_2$")
    ax.set_title(f"{title} (grey: exact posterior)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, fontsize=8, frameon=False)
    return ax


def plot_special_cases(special: dict, grid: dict):
    """Gradient descent, Newton and VON side by side (see :func:`plot_special_case`)."""
    fig, axes = plt.subplots(2, 2, figsize=(7.2, 6.8))
    axes = axes.ravel()
    axes[3].set_visible(False)
    for ax, key in zip(axes, _CASE_STYLE):
        plot_special_case(special, key, grid, ax=ax)
        ax.set_title(_CASE_STYLE[key][1])
        ax.legend(loc="upper right", fontsize=8)  # inside: the panels sit in a grid
    fig.suptitle("Special cases of the BLR: iterates over the exact posterior (grey)")
    fig.tight_layout()
    return fig


def plot_adaptive(adaptive: dict, grid: dict):
    """Top: trajectories of RMSprop, Adam and their BLR forms; bottom: per-step difference to the reference."""
    fig, (ax0, ax1) = plt.subplots(2, 1, figsize=(7.0, 9.6), height_ratios=(1.35, 1.0), layout="constrained")
    _posterior_background(ax0, grid)
    for key in ("RMSprop", "Adam"):
        color = method_color(key)
        ref, ours = adaptive[key]["reference"], adaptive[key]["blr"]
        ax0.plot(ref[:, 0], ref[:, 1], "-", color=color, lw=3, alpha=0.8, label=f"torch.optim.{key}")
        ax0.plot(ours[::5, 0], ours[::5, 1], "o", mfc="none", mec="k", ms=4, mew=0.8,
                 label=f"BLR, {key}'s choices (every 5th step)")
    nosqrt = adaptive["BLR without square root vs Adam"]["blr"]
    ax0.plot(nosqrt[:, 0], nosqrt[:, 1], "-", color="#D55E00", lw=1.2, label="BLR without the square root")
    ax0.plot(nosqrt[0, 0], nosqrt[0, 1], "ks", ms=6, label="start")
    _zoom(ax0, grid, (nosqrt,), sds=2.5)
    ax0.set_xlabel(r"$\theta_1$")
    ax0.set_ylabel(r"$\theta_2$")
    ax0.set_title("Trajectories on the same minibatches (grey: exact posterior)")
    ax0.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, fontsize=8, frameon=False)
    floor = 1e-18
    for key, label, color in (
        ("RMSprop", "BLR with RMSprop's choices vs RMSprop", method_color("RMSprop")),
        ("Adam", "BLR with Adam's choices vs Adam", method_color("Adam")),
        ("BLR without square root vs Adam", "BLR without the square root vs Adam", "#D55E00"),
    ):
        diff = adaptive[key]["diff"]
        ax1.semilogy(np.arange(len(diff)), np.maximum(diff, floor), color=color, label=label)
    ax1.axhline(1e-6, color="0.4", ls="--", lw=1, label="$10^{-6}$")
    ax1.set_xlabel("step")
    ax1.set_ylabel(r"$\max_i |\theta_i^{\mathrm{BLR}} - \theta_i^{\mathrm{torch}}|$")
    ax1.set_title("Difference per step (exact zeros drawn at $10^{-18}$)")
    ax1.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=8, frameon=False)
    return fig


def _ellipse(ax, state, color, label, ls="-", lw=2.0):
    cov = state.covariance().numpy()
    mean = state.mean.numpy()
    vals, vecs = np.linalg.eigh(cov)
    t = np.linspace(0, 2 * np.pi, 200)
    circle = np.stack([np.cos(t), np.sin(t)])
    for k, radius in enumerate((1.0, 2.0)):
        pts = mean[:, None] + vecs @ (radius * np.sqrt(vals)[:, None] * circle)
        ax.plot(pts[0], pts[1], ls, color=color, lw=lw, label=label if k == 0 else None)
    ax.plot(mean[0], mean[1], "o", color=color, ms=4)


def plot_posterior_comparison(res: dict):
    """The variational Gaussians (1 and 2 sd ellipses) over the exact posterior computed on a grid."""
    fig, ax = plt.subplots(figsize=(6.4, 5.4))
    cs = _posterior_background(ax, res["grid"], levels=12)
    fig.colorbar(cs, ax=ax, label="exact posterior density (grid)")
    _ellipse(ax, res["von_state"], method_color("IVON"), "VON (Monte Carlo)")
    _ellipse(ax, res["vi"], "#D55E00", "Gaussian VI optimum (L-BFGS)", ls="--", lw=1.5)
    _ellipse(ax, res["laplace"], method_color("SGLD"), "Laplace", ls=":")
    g = res["grid"]
    ax.plot(float(g["mean"][0]), float(g["mean"][1]), "k*", ms=10, label="exact posterior mean")
    # the 2-sd ellipses of every approximation, with a margin
    lo, hi = np.full(2, np.inf), np.full(2, -np.inf)
    for state in (res["laplace"], res["vi"], res["von_state"]):
        c, sd = state.mean.numpy(), state.covariance().diagonal().sqrt().numpy()
        lo, hi = np.minimum(lo, c - 2.6 * sd), np.maximum(hi, c + 2.6 * sd)
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_xlabel(r"$\theta_1$")
    ax.set_ylabel(r"$\theta_2$")
    ax.set_title("Gaussian approximations (1 and 2 sd) of the logistic posterior")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, fontsize=8, frameon=False)
    return fig


def plot_von_convergence(res: dict):
    """VON's mean and variances per step (all chains) against the VI optimum."""
    fig, axes = plt.subplots(2, 1, figsize=(7.0, 6.6), sharex=True)
    vi_mean, vi_cov = res["vi"].mean.numpy(), res["vi"].covariance().numpy()
    for c, traj in enumerate(res["von_chains"]):
        m = traj["mean"].numpy()
        cov = torch.linalg.inv(traj["precision"]).numpy()
        steps = np.arange(1, len(m) + 1)
        for i, ls in ((0, "-"), (1, "--")):
            first = c == 0
            axes[0].plot(steps, m[:, i], ls, color=method_color("IVON"), alpha=0.5, lw=1,
                         label=f"VON $m_{i + 1}$" if first else None)
            axes[1].plot(steps, cov[:, i, i], ls, color=method_color("IVON"), alpha=0.5, lw=1,
                         label=rf"VON $\Sigma_{{{i + 1}{i + 1}}}$" if first else None)
    for i, ls in ((0, "-"), (1, "--")):
        axes[0].axhline(vi_mean[i], color="#D55E00", ls=ls, lw=1.5, label=f"VI optimum $m_{i + 1}$")
        axes[1].axhline(vi_cov[i, i], color="#D55E00", ls=ls, lw=1.5, label=rf"VI optimum $\Sigma_{{{i + 1}{i + 1}}}$")
    axes[0].set_ylabel("mean")
    axes[1].set_ylabel("variance")
    axes[1].set_xlabel("step + 1")
    for ax in axes:
        ax.set_xscale("log")
        ax.legend(fontsize=8, ncol=2)
    axes[0].set_title(f"VON mean, {len(res['von_chains'])} chains")
    axes[1].set_title(f"VON variances, {len(res['von_chains'])} chains")
    fig.tight_layout()
    return fig


def plot_conjugate(conj: dict):
    """Distance of the natural parameters to the exact posterior's per step, and the prediction (1 - rho)^t."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    dist, pred = conj["distance"], conj["predicted"]
    steps = np.arange(len(dist))
    ax.semilogy(steps, dist, "o", mfc="none", color="#0072B2", label="BLR iterates")
    ax.semilogy(steps, pred, "-", color="k", lw=1, label=r"$(1-\rho)^t \times$ initial distance")
    ax.set_xlabel("step $t$")
    ax.set_ylabel(r"$\max |\lambda_t - \lambda_{\mathrm{post}}|$")
    ax.set_title("Bayesian linear regression: geometric approach to the posterior")
    ax.legend()
    return fig


# --------------------------------------------------------------------------------------------------
# Registration for ``python -m bdk reproduce``
# --------------------------------------------------------------------------------------------------


def _markdown(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    for row in rows:
        cells = [f"{v:.2e}" if isinstance(v, float) and abs(v) < 1e-3 else (f"{v:.4f}" if isinstance(v, float) else str(v))
                 for v in row.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _special_figures(res: dict) -> dict:
    pot = res["potential"]
    lap = blr.laplace_approximation(pot.grad_U, pot.hess_U, torch.zeros(pot.dim, dtype=DTYPE))
    grid = grid_posterior(pot, lap.mean, 7.0 * float(lap.covariance().diagonal().sqrt().max()), 241)
    return {"blr-special-cases": plot_special_cases(res, grid), "blr-adaptive": plot_adaptive(res["adaptive"], grid)}


def _conjugate_summary(res: dict) -> str:
    return _markdown([{
        "one step, max |mean error|": res["mean_error"],
        "one step, max |precision error|": res["precision_error"],
        "rho < 1, max relative deviation from (1-rho)^t": res["geometric_max_rel_error"],
    }])


def _optimizer_summary(res: dict) -> str:
    mf = res["mean_field"]
    rows = [{"quantity": name, "VON optimizer": float(v), "SE": float(se), "mean-field optimum": float(t)}
            for name, v, se, t in zip(
                ["m1", "m2", "precision 1", "precision 2"],
                torch.cat([res["mean"], res["precision"]]), torch.cat([res["se_mean"], res["se_precision"]]),
                torch.cat([mf.mean, mf.precision]))]
    head = (f"VON optimizer vs functional von_step ({res['compare_steps']} steps): max |mean difference| = "
            f"{res['exact_mean_diff']:.1e}, max relative precision difference = {res['exact_precision_rel_diff']:.1e}\n\n")
    return head + _markdown(rows)


def von_references_record(res: dict, grid_points: int = 61, trace_points: int = 80) -> dict:
    """What ``data/records/blr-von-references.json`` keeps of :func:`von_vs_references`: every estimate
    and reference (means, covariances, standard errors, the grid posterior's moments and border mass),
    the grid density on about ``grid_points`` evenly spaced points of each axis (every ``grid_stride``-th
    point of the computed grid), and each VON chain's mean and
    covariance at ``trace_points`` log-spaced steps (``von_trace``: what :func:`plot_von_convergence`
    draws, on its log axis), not every step of every chain."""
    grid = res["grid"]
    grid_stride = max(1, (len(grid["a"]) - 1) // (grid_points - 1))
    g = {"a": grid["a"][::grid_stride], "b": grid["b"][::grid_stride],
         "density": grid["density"][::grid_stride, ::grid_stride], "grid_stride": grid_stride,
         "num_points": len(grid["a"]), "mean": grid["mean"], "covariance": grid["covariance"],
         "edge_mass": grid["edge_mass"]}
    length = len(res["von_chains"][0]["mean"])
    keep = np.unique(np.geomspace(1, length, trace_points).round().astype(int)) - 1
    trace = {"index": keep,
             "mean": torch.stack([c["mean"][keep] for c in res["von_chains"]]),
             "covariance": torch.stack([torch.linalg.inv(c["precision"][keep]) for c in res["von_chains"]])}
    kept = {k: v for k, v in res.items() if k not in ("grid", "von_chains", "potential", "von_state")}
    covariances = {name: res[name].covariance() for name in ("laplace", "vi", "blr_quadrature")}
    return {**kept, "grid": g, "von_trace": trace, "num_chains": len(res["von_chains"]),
            "num_steps": length - 1, "covariances": covariances}


def von_optimizer_record(res: dict, trace_points: int = 100) -> dict:
    """What ``data/records/blr-von-optimizer.json`` keeps of :func:`von_optimizer_experiment`: every
    number, and the runs' means on ``trace_points`` evenly spaced steps of the averaged second half
    (``mean_trajectory_index``) instead of every step."""
    traj = res["mean_trajectory"]
    keep = np.unique(np.linspace(0, len(traj) - 1, min(trace_points, len(traj))).round().astype(int))
    kept = {k: v for k, v in res.items() if k != "mean_trajectory"}
    return {**kept, "mean_trajectory": traj[keep], "mean_trajectory_index": keep,
            "mean_field_covariance": res["mean_field"].covariance()}


def _register() -> None:
    register(Experiment(
        "blr-special-cases", "blr", "BLR special cases (GD, Newton, RMSprop, Adam, VON) vs classical implementations",
        CONFIGS, special_cases, summary=lambda r: _markdown(r["rows"]), figures=_special_figures,
    ))
    register(Experiment(
        "blr-von-references", "blr", "VON with Monte Carlo vs the Gaussian VI optimum, Laplace and the grid posterior",
        CONFIGS, von_vs_references, summary=lambda r: _markdown(summary_table(r)),
        figures=lambda r: {"blr-posterior": plot_posterior_comparison(r), "blr-von-convergence": plot_von_convergence(r)},
        record=von_references_record,
    ))
    register(Experiment(
        "blr-conjugate", "blr", "one BLR step with rho = 1 on Bayesian linear regression vs the exact posterior",
        CONFIGS, conjugate_experiment, summary=_conjugate_summary, figures=lambda r: {"blr-conjugate": plot_conjugate(r)},
    ))
    register(Experiment(
        "blr-von-optimizer", "blr", "the VON optimizer on an nn.Module vs the functional VON and the mean-field optimum",
        CONFIGS, von_optimizer_experiment, summary=_optimizer_summary, record=von_optimizer_record,
    ))


_register()
