"""Experiments of the chapter "SGD as an SDE" (``book/sgd-sde.ipynb``).

One configuration per profile (:data:`CONFIGS`); ``run_*`` functions return plain results (floats, NumPy
arrays), ``plot_*`` functions draw them. The chapter calls them through ``bdk.load_or_run``;
``python -m bdk reproduce`` through the registry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import TwoSlopeNorm
from scipy.special import ndtr

from .. import data, sde
from .._runtime import get_device, one_cpu_thread, seeded_generator
from ..plotting import method_color
from ..timing import Stopwatch
from .registry import Experiment, register

__all__ = [
    "SGDSDEConfig",
    "CONFIGS",
    "TWO_D_HESSIAN",
    "TWO_D_NOISE_STD",
    "run_quadratic",
    "run_diffusion_flux",
    "run_equipartition",
    "run_two_temperatures",
    "run_minibatch_regression",
    "plot_quadratic",
    "plot_diffusion_flux",
    "plot_equipartition",
    "plot_two_temperatures",
    "plot_minibatch_regression",
    "plot_minibatch_scatter",
    "boston_design",
    "gaussian_kl",
    "closest_gibbs_temperature",
    "quadratic_record",
    "two_temperatures_record",
]


@dataclass(frozen=True)
class SGDSDEConfig:
    """Sizes of the chapter's experiments.

    Attributes:
        num_chains: independent SGD chains (their final iterates are iid draws of the stationary law).
        quadratic_lrs: learning rates on the 1-D quadratic with curvature 1 and noise 1.
        histogram_lr: the learning rate whose histogram is drawn.
        flux_num_particles: particles of the one-step flux measurement.
        flux_lr: learning rate of the flux measurement.
        equipartition_lr: learning rate of the equipartition experiment.
        equipartition_num_chains: chains of the equipartition experiment.
        equipartition_num_curvatures: number of curvatures (log-spaced, lr * h from 0.01 to 1.8).
        two_d_lr: the common learning rate of the two-temperature experiment.
        two_d_lr_prime: :math:`\\eta'` of the per-parameter rates :math:`\\eta_i = \\eta'/\\sigma_i^2`.
        regression_lr, regression_batch_size: minibatch SGD on Boston housing.
        regression_num_chains, regression_num_steps: chains and steps of that run.
        regression_num_gradients: minibatch gradients drawn at the optimum to measure the noise covariance.
        seed: base seed.
    """

    num_chains: int
    quadratic_lrs: tuple
    histogram_lr: float
    flux_num_particles: int
    flux_lr: float
    equipartition_lr: float
    equipartition_num_chains: int
    equipartition_num_curvatures: int
    two_d_lr: float
    two_d_lr_prime: float
    regression_lr: float
    regression_batch_size: int
    regression_num_chains: int
    regression_num_steps: int
    regression_num_gradients: int
    seed: int = 0


CONFIGS = {
    "quick": SGDSDEConfig(
        num_chains=20_000,
        quadratic_lrs=(0.05, 0.2, 0.5, 1.0, 1.5),
        histogram_lr=0.5,
        flux_num_particles=1_000_000,
        flux_lr=0.02,
        equipartition_lr=0.1,
        equipartition_num_chains=10_000,
        equipartition_num_curvatures=10,
        two_d_lr=0.05,
        two_d_lr_prime=0.05,
        regression_lr=0.1,
        regression_batch_size=8,
        regression_num_chains=2_000,
        regression_num_steps=700,
        regression_num_gradients=20_000,
    ),
    "paper": SGDSDEConfig(
        num_chains=1_000_000,
        quadratic_lrs=(0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 1.5, 1.8),
        histogram_lr=0.5,
        flux_num_particles=100_000_000,
        flux_lr=0.02,
        equipartition_lr=0.1,
        equipartition_num_chains=1_000_000,
        equipartition_num_curvatures=20,
        two_d_lr=0.05,
        two_d_lr_prime=0.05,
        regression_lr=0.1,
        regression_batch_size=8,
        regression_num_chains=100_000,
        regression_num_steps=3_000,
        regression_num_gradients=1_000_000,
    ),
}

TWO_D_HESSIAN = np.array([[2.0, 0.8], [0.8, 1.0]])
TWO_D_NOISE_STD = np.array([0.5, 2.0])


def _steps_to_stationarity(lr: float, curvature: float, tolerance: float = 1e-4) -> int:
    """Steps after which (1 - lr h)^(2k) < tolerance: a variance started at 0 is within that fraction of its
    stationary value (1e-4, a hundred times below the relative standard error of the measurements here)."""
    contraction = abs(1 - lr * curvature)
    if contraction == 0:
        return 1
    return max(1, math.ceil(math.log(tolerance) / (2 * math.log(contraction))))


def gaussian_kl(s: np.ndarray, t: np.ndarray) -> float:
    """KL( N(0, s) || N(0, t) ) in nats."""
    d = s.shape[0]
    t_inv = np.linalg.inv(t)
    return 0.5 * float(np.trace(t_inv @ s) - d + np.linalg.slogdet(t)[1] - np.linalg.slogdet(s)[1])


def closest_gibbs_temperature(s: np.ndarray, hessian: np.ndarray) -> tuple[float, float]:
    """The temperature T minimising KL( N(0, Sigma) || Gibbs e^{-L/T} ) for L = x^T H x / 2, and that KL.

    The Gibbs density is N(0, T H^{-1}); the KL is minimised at T = tr(H Sigma) / d.
    """
    temperature = float(np.trace(hessian @ s)) / s.shape[0]
    return temperature, gaussian_kl(s, temperature * np.linalg.inv(hessian))


# ---------------------------------------------------------------------------------------------
# 1. the 1-D quadratic: temperature eta sigma^2 / 2 and the exact discrete variance
# ---------------------------------------------------------------------------------------------


@one_cpu_thread()
def run_quadratic(cfg: SGDSDEConfig) -> dict:
    """SGD with Gaussian gradient noise on L = theta^2 / 2 (h = 1, sigma = 1) at several learning rates."""
    device = get_device()
    h, sigma = 1.0, 1.0
    grad = lambda theta: h * theta  # noqa: E731
    measured, samples = [], None
    for i, lr in enumerate(cfg.quadratic_lrs):
        theta0 = torch.zeros(cfg.num_chains, 1, device=device)
        theta = sde.noisy_sgd(grad, theta0, lr, _steps_to_stationarity(lr, h), noise_std=sigma,
                              generator=seeded_generator(cfg.seed + i, device))
        measured.append(float(theta.double().var()))
        if lr == cfg.histogram_lr:
            samples = theta[:, 0].cpu().numpy()
    lrs = np.array(cfg.quadratic_lrs)
    measured = np.array(measured)
    exact = sde.sgd_stationary_variance(h, lrs, sigma)
    return {
        "curvature": h,
        "noise_std": sigma,
        "lrs": lrs,
        "temperature": sde.sgd_temperature(lrs, sigma),
        "measured": measured,
        "measured_se": measured * math.sqrt(2 / cfg.num_chains),
        "exact": exact,
        "sde": sde.sde_stationary_variance(h, lrs, sigma),
        "histogram_lr": cfg.histogram_lr,
        "samples": samples,
    }


def plot_quadratic(res: dict):
    """Left: the stationary histogram at one rate against the SDE's Gibbs density and the exact law.
    Right: stationary variance against lr * h, measured, exact and SDE."""
    fig, axes = plt.subplots(2, 1, figsize=(7.5, 7.2), layout="constrained")
    ax = axes[0]
    lr, h, sigma = res["histogram_lr"], res["curvature"], res["noise_std"]
    exact_var = sde.sgd_stationary_variance(h, lr, sigma)
    temperature = sde.sgd_temperature(lr, sigma)
    x = np.linspace(-4 * math.sqrt(exact_var), 4 * math.sqrt(exact_var), 400)
    ax.hist(res["samples"], bins=60, density=True, color=method_color("SGD"), alpha=0.5,
            label=f"SGD iterates ({len(res['samples']):,} chains)")
    gibbs = np.exp(-h * x**2 / 2 / temperature) / math.sqrt(2 * math.pi * temperature / h)
    ax.plot(x, gibbs, color="0.3", ls="--", label=r"SDE: $\propto e^{-2L/(\eta\sigma^2)}$")
    ax.plot(x, np.exp(-x**2 / (2 * exact_var)) / math.sqrt(2 * math.pi * exact_var), color=method_color("exact"),
            label=r"exact: $\mathcal{N}(0,\ \eta\sigma^2 / (h(2 - \eta h)))$")
    ax.set_xlabel(r"$\theta$")
    ax.set_ylabel(r"density $p(\theta)$")
    ax.set_title(rf"Stationary law of SGD on $L = h\theta^2/2$ ($h = {h:g}$, $\sigma = {sigma:g}$, $\eta = {lr:g}$)")
    ax.legend(loc="upper left", fontsize=9)
    ax = axes[1]
    eh = res["lrs"] * h
    grid = np.linspace(0.01, 1.95, 300)
    t = sde.sgd_temperature(grid / h, sigma)
    ax.plot(grid, sde.sgd_stationary_variance(h, grid / h, sigma) / t * h, color=method_color("exact"),
            label=r"exact: $2/(2 - \eta h)$")
    ax.axhline(1.0, color="0.3", ls="--", label="SDE: 1")
    ax.errorbar(eh, res["measured"] / res["temperature"] * h, yerr=2 * res["measured_se"] / res["temperature"] * h,
                fmt="o", color=method_color("SGD"), label="SGD, measured (±2 SE)")
    ax.set_yscale("log")
    ax.set_xlabel(r"$\eta h$")
    ax.set_ylabel(r"stationary variance / $(T/h)$")
    ax.set_title(r"Stationary variance: the SDE holds while $\eta h \ll 1$")
    ax.legend(loc="upper left")
    return fig


# ---------------------------------------------------------------------------------------------
# 2. the diffusion flux and the constant 1/2
# ---------------------------------------------------------------------------------------------


@one_cpu_thread()
def run_diffusion_flux(cfg: SGDSDEConfig) -> dict:
    """Count, for one SGD step from the stationary law, the net number of iterates crossing each point x.

    The step is split into its drift part, -eta L'(theta), and its noise part, -eta sigma xi, and the
    crossings of each are counted separately (per step, as a fraction of all iterates).
    """
    device = get_device()
    h, sigma, lr = 1.0, 1.0, cfg.flux_lr
    var = sde.sgd_stationary_variance(h, lr, sigma)
    gen = seeded_generator(cfg.seed + 40, device)
    n = cfg.flux_num_particles
    num_chunks = 8  # the spread of the chunks' estimates gives the standard error
    chunk = math.ceil(n / num_chunks)
    xs = np.linspace(-3, 3, 49) * math.sqrt(var)
    x_t = torch.tensor(xs, device=device, dtype=torch.float64)

    def crossings(before, after):
        """Net number of iterates crossing each grid point left to right (a point x_j is crossed when it
        lies strictly between the position before and after the move), via sorted insertion indices."""
        lo, hi = torch.minimum(before, after), torch.maximum(before, after)
        first = torch.searchsorted(x_t, lo, right=True)  # first grid index with x_j > lo
        last = torch.searchsorted(x_t, hi, right=False)  # first grid index with x_j >= hi
        sign = torch.where(after > before, 1.0, -1.0).double()
        diff = torch.zeros(len(xs) + 1, dtype=torch.float64, device=device)
        diff.index_add_(0, first, sign)
        diff.index_add_(0, last, -sign)
        return torch.cumsum(diff, 0)[:-1]

    drift, noise, total, sizes = [], [], [], []
    done = 0
    while done < n:
        m = min(chunk, n - done)
        theta = math.sqrt(var) * torch.randn(m, generator=gen, device=device, dtype=torch.float64)
        jump = -lr * sigma * torch.randn(m, generator=gen, device=device, dtype=torch.float64)
        move = -lr * h * theta
        drift.append(crossings(theta, theta + move).cpu().numpy())
        noise.append(crossings(theta, theta + jump).cpu().numpy())
        total.append(crossings(theta, theta + move + jump).cpu().numpy())
        sizes.append(m)
        done += m
    sizes = np.array(sizes, dtype=float)
    density = np.exp(-xs**2 / (2 * var)) / math.sqrt(2 * math.pi * var)
    d_density = -xs / var * density
    basis = -lr**2 * sigma**2 * d_density  # J_noise = c * basis, with c = 1/2 to leading order
    chunk_c = [float(basis @ (f / m) / (basis @ basis)) for f, m in zip(noise, sizes)]
    noise_flux = np.sum(noise, axis=0) / n
    # exact expected flux of the noise step from the Gaussian stationary law: P(theta < x) - P(theta + jump < x)
    exact_noise = ndtr(xs / math.sqrt(var)) - ndtr(xs / math.sqrt(var + lr**2 * sigma**2))
    return {
        "lr": lr,
        "curvature": h,
        "noise_std": sigma,
        "variance": var,
        "x": xs,
        "drift_flux": np.sum(drift, axis=0) / n,
        "noise_flux": noise_flux,
        "total_flux": np.sum(total, axis=0) / n,
        "theory_noise": 0.5 * basis,
        "theory_drift": -lr * h * xs * density,
        "exact_noise_flux": exact_noise,
        "fitted_constant": float(basis @ noise_flux / (basis @ basis)),
        "fitted_constant_se": float(np.std(chunk_c, ddof=1) / math.sqrt(len(chunk_c))),
        "exact_constant": float(basis @ exact_noise / (basis @ basis)),
        "num_particles": n,
    }


def plot_diffusion_flux(res: dict):
    """The measured diffusive flux against -(1/2) eta^2 sigma^2 rho', and the drift flux against -eta L' rho."""
    fig, ax = plt.subplots(figsize=(7.5, 5.4), layout="constrained")
    z = res["x"] / math.sqrt(res["variance"])
    ax.plot(z, res["noise_flux"], "o", ms=4, color=method_color("SGD"), label="measured: noise part of the step")
    ax.plot(z, res["theory_noise"], color=method_color("exact"), label=r"$-\frac{1}{2}\eta^2\sigma^2\,\rho'(x)$")
    ax.plot(z, 2 * res["theory_noise"], color="0.5", ls=":", label=r"$-\eta^2\sigma^2\,\rho'(x)$ (without the 1/2)")
    ax.plot(z, res["drift_flux"], "s", ms=4, color=method_color("SGLD"), label="measured: drift part of the step")
    ax.plot(z, res["theory_drift"], color=method_color("SGLD"), lw=1.2, label=r"$-\eta L'(x)\,\rho(x)$")
    ax.plot(z, res["total_flux"], "^", ms=4, color="0.3", label="measured: whole step (net)")
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set_xlabel(r"position $x$ / stationary standard deviation")
    ax.set_ylabel("net fraction of iterates crossing $x$ per step")
    ax.set_title(rf"Probability flux through $x$ in one SGD step ($\eta = {res['lr']}$)")
    fig.legend(loc="outside lower center", fontsize=9, ncol=2)
    return fig


# ---------------------------------------------------------------------------------------------
# 3. the Hessian-normalised quadratic: equipartition, and noise proportional to the Hessian
# ---------------------------------------------------------------------------------------------


@one_cpu_thread()
def run_equipartition(cfg: SGDSDEConfig) -> dict:
    """SGD on L = sum_i h_i theta_i^2 / 2 with many curvatures, (a) isotropic noise, (b) noise variance c h_i."""
    device = get_device()
    lr = cfg.equipartition_lr
    curvatures = np.logspace(math.log10(0.01 / lr), math.log10(1.8 / lr), cfg.equipartition_num_curvatures)
    h_t = torch.tensor(curvatures, device=device, dtype=torch.float32)
    grad = lambda theta: h_t * theta  # noqa: E731
    steps = _steps_to_stationarity(lr, curvatures.min())
    theta0 = torch.zeros(cfg.equipartition_num_chains, len(curvatures), device=device)
    sigma = 1.0
    iso = sde.noisy_sgd(grad, theta0, lr, steps, noise_std=sigma, generator=seeded_generator(cfg.seed + 50, device))
    c = 1.0  # noise covariance c * H
    fisher = sde.noisy_sgd(grad, theta0, lr, steps, noise_std=np.sqrt(c * curvatures),
                           generator=seeded_generator(cfg.seed + 51, device))
    var_iso = iso.double().var(0).cpu().numpy()
    var_fisher = fisher.double().var(0).cpu().numpy()
    return {
        "lr": lr,
        "curvatures": curvatures,
        "temperature": sde.sgd_temperature(lr, sigma),
        "noise_scale": c,
        "z_variance": curvatures * var_iso,  # Var(sqrt(h) theta)
        "z_variance_exact": curvatures * sde.sgd_stationary_variance(curvatures, lr, sigma),
        "fisher_variance": var_fisher,
        "fisher_variance_exact": sde.sgd_stationary_variance(curvatures, lr, np.sqrt(c * curvatures)),
        "num_chains": cfg.equipartition_num_chains,
    }


def plot_equipartition(res: dict):
    """Left: Var(sqrt(h_i) theta_i) / T against lr * h_i. Right: Var(theta_i) when the noise covariance is c H."""
    fig, axes = plt.subplots(2, 1, figsize=(7.5, 7.2), layout="constrained")
    eh = res["lr"] * res["curvatures"]
    rel_se = math.sqrt(2 / res["num_chains"])
    ax = axes[0]
    t = res["temperature"]
    ax.errorbar(eh, res["z_variance"] / t, yerr=2 * rel_se * res["z_variance"] / t, fmt="o", color=method_color("SGD"),
                label="SGD, measured (±2 SE)")
    ax.plot(eh, res["z_variance_exact"] / t, color=method_color("exact"), label=r"exact: $2/(2 - \eta h_i)$")
    ax.axhline(1.0, color="0.3", ls="--", label="SDE (equipartition): 1")
    ax.set_xscale("log")
    ax.set_xlabel(r"$\eta h_i$")
    ax.set_ylabel(r"$\mathrm{Var}(\sqrt{h_i}\,\theta_i)\,/\,T$")
    ax.set_title("Isotropic noise: each direction holds the same temperature")
    ax.legend(loc="upper left")
    ax = axes[1]
    level = res["lr"] * res["noise_scale"] / 2
    ax.errorbar(res["curvatures"], res["fisher_variance"], yerr=2 * rel_se * res["fisher_variance"], fmt="o",
                color=method_color("SGD"), label="SGD, measured (±2 SE)")
    ax.plot(res["curvatures"], res["fisher_variance_exact"], color=method_color("exact"), label=r"exact: $\eta c/(2 - \eta h_i)$")
    ax.axhline(level, color="0.3", ls="--", label=r"SDE: $\eta c/2$ in every direction")
    ax.set_xscale("log")
    ax.set_xlabel(r"curvature $h_i$")
    ax.set_ylabel(r"$\mathrm{Var}(\theta_i)$")
    ax.set_title(r"Noise covariance $C = cH$: the same spread in every direction")
    ax.legend(loc="upper left")
    return fig


# ---------------------------------------------------------------------------------------------
# 4. two temperatures in 2-D, and per-parameter rates that restore a Gibbs density
# ---------------------------------------------------------------------------------------------


@one_cpu_thread()
def run_two_temperatures(cfg: SGDSDEConfig) -> dict:
    """2-D quadratic with different noise per coordinate: a common rate (two temperatures) and rates eta'/sigma_i^2."""
    device = get_device()
    hess, std = TWO_D_HESSIAN, TWO_D_NOISE_STD
    noise_cov = np.diag(std**2)
    h_t = torch.tensor(hess, device=device, dtype=torch.float32)
    grad = lambda theta: theta @ h_t  # noqa: E731  (H is symmetric)
    eig_min = np.linalg.eigvalsh(hess).min()
    out = {"hessian": hess, "noise_std": std}
    for i, (name, lr) in enumerate((("common", np.full(2, cfg.two_d_lr)), ("per_parameter", cfg.two_d_lr_prime / std**2))):
        steps = _steps_to_stationarity(float(lr.min()), eig_min)
        theta0 = torch.zeros(cfg.num_chains, 2, device=device)
        theta = sde.noisy_sgd(grad, theta0, lr, steps, noise_std=std, generator=seeded_generator(cfg.seed + 60 + i, device))
        samples = theta.double().cpu().numpy()
        exact = sde.stationary_covariance(hess, noise_cov, lr, "discrete")
        continuous = sde.stationary_covariance(hess, noise_cov, lr, "continuous")
        temperature, kl = closest_gibbs_temperature(exact, hess)
        out[name] = {
            "lr": lr,
            "temperatures": sde.sgd_temperature(lr, std),
            "samples": samples,
            "measured_cov": np.cov(samples.T),
            "exact_cov": exact,
            "continuous_cov": continuous,
            "gibbs_temperature": temperature,
            "gibbs_kl": kl,
            "num_steps": steps,
        }
    return out


def plot_two_temperatures(res: dict):
    """Contours of the best Gibbs density e^{-L/T} and of the exact stationary law over the SGD iterates."""
    fig, axes = plt.subplots(1, 2, figsize=(7.5, 4.9), layout="constrained")
    hess = res["hessian"]
    for ax, name, title in ((axes[0], "common", "One learning rate:\ntwo temperatures"),
                            (axes[1], "per_parameter", "Rates $\\eta_i = \\eta'/\\sigma_i^2$:\none temperature")):
        r = res[name]
        s = r["exact_cov"]
        lim = 3.2 * math.sqrt(max(np.diag(s).max(), np.diag(r["gibbs_temperature"] * np.linalg.inv(hess)).max()))
        g = np.linspace(-lim, lim, 200)
        x1, x2 = np.meshgrid(g, g, indexing="ij")
        pts = np.stack([x1, x2], -1)
        sub = r["samples"][:3000]
        ax.scatter(sub[:, 0], sub[:, 1], s=3, alpha=0.25, color=method_color("SGD"),
                   label="SGD iterates (3,000 chains)")
        for cov, color, ls, label in (
            (s, method_color("exact"), "-", "exact stationary law (discrete Lyapunov)"),
            (r["gibbs_temperature"] * np.linalg.inv(hess), "#D55E00", "--",
             r"closest Gibbs density $e^{-L/T}$"),
        ):
            prec = np.linalg.inv(cov)
            q = np.einsum("...i,ij,...j->...", pts, prec, pts)
            ax.contour(x1, x2, q, levels=[1.0, 4.0, 9.0], colors=color, linestyles=ls, linewidths=1.4)
            ax.plot([], [], color=color, ls=ls, label=label)
        temps = ", ".join(f"{t:.3g}" for t in r["temperatures"])
        ax.set_title(f"{title}\n" + rf"$T_i$ = ({temps}); KL {r['gibbs_kl']:.3f} nats", fontsize=10)
        ax.set_xlabel(r"$\theta_1$")
        ax.set_ylabel(r"$\theta_2$")
        ax.set_aspect("equal")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=2, fontsize=9, markerscale=3)
    return fig


# ---------------------------------------------------------------------------------------------
# 5. minibatch SGD on Boston housing: noise from the data
# ---------------------------------------------------------------------------------------------


def boston_design(split: int = 0, device=None):
    """Boston housing (split 0): standardised inputs with an intercept column, standardised targets (float64)."""
    ds = data.load_boston(split=split)
    x = ds.x_train.double()
    x = torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
    names = list(ds.info.get("feature_names", [f"x{j}" for j in range(x.shape[1] - 1)])) + ["intercept"]
    return x.to(device), ds.y_train.double().to(device), names


def _split_half_noise(samples: torch.Tensor) -> float:
    """Frobenius-norm noise of a covariance estimate: half the distance between the estimates of two halves."""
    half = samples.shape[0] // 2
    a = torch.cov(samples[:half].T)
    b = torch.cov(samples[half:2 * half].T)
    return float(torch.linalg.matrix_norm(a - b)) / 2


@one_cpu_thread()
def run_minibatch_regression(cfg: SGDSDEConfig) -> dict:
    """Measured gradient-noise covariance, predicted stationary covariances and SGD iterates' covariance."""
    device = get_device()
    x, y, names = boston_design(device=device)
    n, d = x.shape
    lr, batch = cfg.regression_lr, cfg.regression_batch_size
    w_star = torch.linalg.lstsq(x, y[:, None]).solution[:, 0]
    hess = (x.T @ x / n).cpu().numpy()
    # the gradient noise: minibatch gradients at the optimum, against the formula
    gen = seeded_generator(cfg.seed + 70, device)
    grads = []
    for start in range(0, cfg.regression_num_gradients, 100_000):
        m = min(100_000, cfg.regression_num_gradients - start)
        idx = torch.randint(n, (m, batch), generator=gen, device=device)
        residual = torch.einsum("mbd,d->mb", x[idx], w_star) - y[idx]
        grads.append(torch.einsum("mbd,mb->md", x[idx], residual) / batch)
    grads = torch.cat(grads)
    noise_measured = torch.cov(grads.T).cpu().numpy()
    noise_formula = sde.least_squares_gradient_noise_covariance(x, y, w_star, batch).cpu().numpy()
    # predictions of the stationary covariance
    continuous = sde.stationary_covariance(hess, noise_formula, lr, "continuous")
    discrete = sde.stationary_covariance(hess, noise_formula, lr, "discrete")
    exact = sde.least_squares_sgd_stationary_covariance(x, y, lr, batch)
    # SGD chains from the optimum
    # the chains in float32 (their spread is ~1e-2 of |w*|, far above float32 round-off)
    w0 = w_star.float().expand(cfg.regression_num_chains, d).contiguous()
    with Stopwatch(device) as clock:
        w = sde.minibatch_sgd_least_squares(x.float(), y.float(), w0, lr, batch, cfg.regression_num_steps,
                                            generator=seeded_generator(cfg.seed + 71, device)).double()
    seconds = clock.seconds
    iterate_cov = torch.cov(w.T).cpu().numpy()
    # expected Frobenius noise of the iterate covariance from num_chains iid Gaussian-like draws
    var_entries = (np.outer(np.diag(exact), np.diag(exact)) + exact**2) / cfg.regression_num_chains
    eig = np.linalg.eigvalsh(hess)
    return {
        "feature_names": names,
        "lr": lr,
        "batch_size": batch,
        "num_data": n,
        "hessian_eigenvalues": eig,
        "noise_measured": noise_measured,
        "noise_formula": noise_formula,
        "noise_rel_error": float(np.linalg.norm(noise_measured - noise_formula) / np.linalg.norm(noise_formula)),
        "noise_rel_noise": _split_half_noise(grads) / float(np.linalg.norm(noise_formula)),
        "continuous": continuous,
        "discrete": discrete,
        "exact": exact,
        "iterates": iterate_cov,
        "iterates_rel_noise": float(np.sqrt(var_entries.sum()) / np.linalg.norm(exact)),
        "rel_error": {k: float(np.linalg.norm(v - iterate_cov) / np.linalg.norm(iterate_cov))
                      for k, v in (("continuous", continuous), ("discrete", discrete), ("exact", exact))},
        "num_chains": cfg.regression_num_chains,
        "num_steps": cfg.regression_num_steps,
        "relaxation_steps": float(1 / (lr * eig.min())),
        "seconds": seconds,
    }


def plot_minibatch_regression(res: dict):
    """2x2 heat maps over the 14 parameters: the measured gradient noise :math:`\\eta C` (top left, its own
    colour scale) and the stationary covariance :math:`\\Sigma`, measured and predicted twice (one colour scale
    shared by those three panels); each panel has its colour bar, named by the panel's title."""
    fig, axes = plt.subplots(2, 2, figsize=(7.5, 6.9), layout="constrained")
    panels = (
        (res["lr"] * res["noise_measured"], r"noise $\eta\,C$ at $w^*$ (measured)"),
        (res["iterates"], r"$\Sigma$ measured (SGD chains)"),
        (res["continuous"], r"$\Sigma$ predicted: $H\Sigma + \Sigma H = \eta\,C$"),
        (res["exact"], r"$\Sigma$ predicted: exact"),
    )
    scale = max(np.abs(p[0]).max() for p in panels[1:])
    names = res["feature_names"]
    ticks = range(len(names))
    for j, (ax, (matrix, title)) in enumerate(zip(axes.ravel(), panels)):
        vmax = scale if j > 0 else np.abs(matrix).max()
        image = ax.imshow(matrix, cmap="RdBu_r", norm=TwoSlopeNorm(0.0, -vmax, vmax))
        ax.set_title(title, fontsize=10)
        # one parameter order in all four panels: names on the outer edges only
        ax.set_xticks(ticks)
        ax.set_yticks(ticks)
        if j >= 2:
            ax.set_xticklabels(names, rotation=90, fontsize=8)
        else:
            ax.tick_params(labelbottom=False)
        if j % 2 == 0:
            ax.set_yticklabels(names, fontsize=8)
        else:
            ax.tick_params(labelleft=False)
        ax.grid(False)
        bar = fig.colorbar(image, ax=ax, shrink=0.9, pad=0.03, aspect=22)
        bar.ax.tick_params(labelsize=8)
    fig.suptitle(f"Minibatch SGD on Boston housing ($\\eta = {res['lr']:g}$, $B = {res['batch_size']}$): "
                 f"covariances of the {len(names)} parameters", fontsize=11)
    return fig


def plot_minibatch_scatter(res: dict):
    """Every entry of the stationary covariance: three predictions against the SGD iterates' covariance."""
    fig, ax = plt.subplots(figsize=(6.4, 5.0))
    measured = res["iterates"].ravel()
    lim = [measured.min() - 0.1 * np.ptp(measured), measured.max() + 0.1 * np.ptp(measured)]
    ax.plot(lim, lim, color="0.6", lw=1, label="prediction = measurement")
    for key, marker, color, label in (("continuous", "o", "0.55", "continuous Lyapunov"),
                                      ("discrete", "s", method_color("SGD"), "discrete Lyapunov"),
                                      ("exact", "^", method_color("exact"), "exact, with state-dependent noise")):
        ax.plot(measured, res[key].ravel(), marker, ms=4, ls="none", color=color,
                label=f"{label} (error {100 * res['rel_error'][key]:.1f}%)")
    ax.set_xlabel("measured covariance entry (SGD iterates)")
    ax.set_ylabel("predicted covariance entry")
    ax.set_title(f"Every entry of $\\Sigma$ (sampling noise of the measurement: "
                 f"{100 * res['iterates_rel_noise']:.1f}%)", fontsize=10)
    ax.legend(loc="upper left", fontsize=9)
    return fig


# ---------------------------------------------------------------------------------------------
# records: what ``--record`` keeps of a run (histograms of the iterates, never the iterates)
# ---------------------------------------------------------------------------------------------


def quadratic_record(res: dict, bins: int = 60) -> dict:
    """What ``data/records/sgd-sde-quadratic.json`` keeps: every number of :func:`run_quadratic` but the
    iterates at ``histogram_lr``, which are replaced by their histogram (``hist_edges``, ``hist_density``,
    ``bins`` bins over their range, as :func:`plot_quadratic` draws them) and their number."""
    samples = np.asarray(res["samples"])
    density, edges = np.histogram(samples, bins=bins, density=True)
    kept = {k: v for k, v in res.items() if k != "samples"}
    return {**kept, "hist_edges": edges, "hist_density": density, "num_chains": len(samples)}


def two_temperatures_record(res: dict, bins: int = 40) -> dict:
    """What ``data/records/sgd-sde-two-temperatures.json`` keeps: every number of
    :func:`run_two_temperatures` but the iterates, which are replaced, per case, by their 2-D histogram
    (``hist_edges`` and ``hist_density``, ``bins x bins`` over 3.2 standard deviations of the exact law on
    each axis) and their number."""
    out = {}
    for name, r in res.items():
        if not isinstance(r, dict):
            out[name] = r
            continue
        samples = np.asarray(r["samples"])
        half = 3.2 * np.sqrt(np.diag(np.asarray(r["exact_cov"])))
        edges = [np.linspace(-w, w, bins + 1) for w in half]
        density, _, _ = np.histogram2d(samples[:, 0], samples[:, 1], bins=edges, density=True)
        out[name] = {**{k: v for k, v in r.items() if k != "samples"}, "hist_edges": edges, "hist_density": density,
                     "num_chains": len(samples)}
    return out


# ---------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------

_CHAPTER = "book/sgd-sde.ipynb"
for _name, _run, _plot, _record, _description in (
    ("sgd-sde-quadratic", run_quadratic, lambda r: {"quadratic": plot_quadratic(r)}, quadratic_record,
     "stationary variance of noisy SGD on a quadratic: measured, exact, SDE"),
    ("sgd-sde-flux", run_diffusion_flux, lambda r: {"flux": plot_diffusion_flux(r)}, None,
     "the diffusive flux -(1/2) eta^2 sigma^2 rho' of one SGD step"),
    ("sgd-sde-equipartition", run_equipartition, lambda r: {"equipartition": plot_equipartition(r)}, None,
     "Hessian-normalised quadratic: equipartition, and noise proportional to the Hessian"),
    ("sgd-sde-two-temperatures", run_two_temperatures, lambda r: {"two_temperatures": plot_two_temperatures(r)},
     two_temperatures_record, "two temperatures in 2-D, and per-parameter rates that restore a Gibbs density"),
    ("sgd-sde-boston", run_minibatch_regression,
     lambda r: {"boston": plot_minibatch_regression(r), "boston_scatter": plot_minibatch_scatter(r)}, None,
     "minibatch SGD on Boston housing: gradient-noise and stationary covariances"),
):
    register(Experiment(name=_name, chapter=_CHAPTER, description=_description, configs=CONFIGS, run=_run, figures=_plot,
                        record=_record))
