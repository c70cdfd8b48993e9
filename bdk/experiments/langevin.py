"""Experiments of the chapter "Langevin dynamics and its stationary distribution" (``book/langevin.ipynb``).

One configuration per profile (:data:`CONFIGS`); each ``run_*`` function takes it and returns plain
results (floats and NumPy arrays, on the CPU), and each ``plot_*`` function turns those results into a
figure. The chapter calls them through ``bdk.load_or_run``; ``python -m bdk reproduce`` through the
registry.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.animation import FuncAnimation

from .. import langevin as L
from .._runtime import get_device, one_cpu_thread, seeded_generator
from ..plotting import method_color
from ..timing import Stopwatch
from .registry import Experiment, register

__all__ = [
    "LangevinConfig",
    "CONFIGS",
    "double_well",
    "banana",
    "run_histograms",
    "run_bias",
    "run_fokker_planck",
    "run_mala",
    "plot_histograms",
    "plot_convergence",
    "plot_bias",
    "plot_fokker_planck",
    "plot_mala",
    "animate_relaxation",
    "fit_loglog_slope",
    "histograms_record",
    "fokker_planck_record",
    "mala_record",
]


@dataclass(frozen=True)
class LangevinConfig:
    """Sizes of the chapter's experiments.

    Attributes:
        num_particles: independent particles (chains) for the Gibbs histograms and the density flow.
        step_size: Euler-Maruyama time step for the 1-D Gibbs histogram.
        step_size_2d: Euler-Maruyama time step for the 2-D (banana) histogram.
        total_time: simulated time for the Gibbs histograms (the double well relaxes in about 1.25).
        num_snapshots: trajectory snapshots kept for the distance-versus-time curves.
        bias_step_sizes_gaussian, bias_step_sizes_double_well: step sizes of the bias study.
        bias_num_particles: particles per step size in the bias study.
        bias_burn_in_time, bias_average_time: burn-in and averaging time of the bias study.
        fp_num_cells: finite-volume cells on [-2.5, 2.5] for the Fokker-Planck solver.
        fp_particle_step_size: Euler-Maruyama step of the particles drawn beside the solver.
        fp_times: the times at which density and histogram are compared.
        mala_step_size: the large step at which Euler-Maruyama is visibly biased and MALA is not.
        mala_time: simulated time of that comparison.
        acceptance_step_sizes: step sizes of the acceptance-rate sweep.
        acceptance_num_particles, acceptance_num_steps: chains and steps per step size in that sweep.
        seed: base seed of every generator.
    """

    num_particles: int
    step_size: float
    step_size_2d: float
    total_time: float
    num_snapshots: int
    bias_step_sizes_gaussian: tuple
    bias_step_sizes_double_well: tuple
    bias_num_particles: int
    bias_burn_in_time: float
    bias_average_time: float
    fp_num_cells: int
    fp_particle_step_size: float
    fp_times: tuple
    mala_step_size: float
    mala_time: float
    acceptance_step_sizes: tuple
    acceptance_num_particles: int
    acceptance_num_steps: int
    seed: int = 0


CONFIGS = {
    "quick": LangevinConfig(
        num_particles=10_000,
        step_size=0.002,
        step_size_2d=0.01,
        total_time=10.0,
        num_snapshots=40,
        bias_step_sizes_gaussian=(0.02, 0.05, 0.1, 0.2, 0.4),
        bias_step_sizes_double_well=(0.006, 0.012, 0.02, 0.03),
        bias_num_particles=20_000,
        bias_burn_in_time=3.0,
        bias_average_time=8.0,
        fp_num_cells=251,
        fp_particle_step_size=0.002,
        fp_times=(0.0, 0.05, 0.2, 0.6, 1.5, 6.0),
        mala_step_size=0.03,
        mala_time=8.0,
        acceptance_step_sizes=(0.001, 0.003, 0.01, 0.03, 0.1, 0.3),
        acceptance_num_particles=5_000,
        acceptance_num_steps=100,
    ),
    "paper": LangevinConfig(
        num_particles=1_000_000,
        step_size=0.0005,
        step_size_2d=0.002,
        total_time=20.0,
        num_snapshots=80,
        bias_step_sizes_gaussian=(0.01, 0.02, 0.05, 0.1, 0.2, 0.4),
        bias_step_sizes_double_well=(0.002, 0.004, 0.008, 0.015, 0.03),
        bias_num_particles=1_000_000,
        bias_burn_in_time=6.0,
        bias_average_time=40.0,
        fp_num_cells=501,
        fp_particle_step_size=0.0002,
        fp_times=(0.0, 0.05, 0.2, 0.6, 1.5, 6.0),
        mala_step_size=0.03,
        mala_time=20.0,
        acceptance_step_sizes=(0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3),
        acceptance_num_particles=100_000,
        acceptance_num_steps=400,
    ),
}


def double_well() -> L.DoubleWell:
    """The chapter's double well, :math:`U(x) = (x^2 - 1)^2 + x/2` (the left well is deeper)."""
    return L.DoubleWell(height=1.0, tilt=0.5)


def banana() -> L.Banana:
    """The chapter's 2-D target, a banana with :math:`s_1 = 1`, :math:`s_2 = 0.5`, :math:`b = 0.5`."""
    return L.Banana(s1=1.0, s2=0.5, b=0.5)


DW_EDGES = np.linspace(-2.5, 2.5, 51)
BANANA_EDGES = (np.linspace(-3.0, 3.0, 25), np.linspace(-1.5, 3.0, 19))


def _steps(total_time: float, step_size: float) -> int:
    return max(1, int(round(total_time / step_size)))


def _chain_grid() -> torch.Tensor:
    """Grid for the Euler-Maruyama chain's stationary law on the double well: the density is below e^-34
    outside [-2.6, 2.6], and dx = 0.013 resolves the transition kernel of every step size used (dx <= sqrt(2h)/3
    for h >= 0.0034)."""
    return torch.linspace(-2.6, 2.6, 401, dtype=torch.float64)


def fit_loglog_slope(x, y) -> float:
    """Least-squares slope of ``log y`` against ``log x`` (the order of a power law ``y ~ x^slope``)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if (x <= 0).any() or (y <= 0).any():
        raise ValueError("a log-log slope needs positive x and y.")
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


# ---------------------------------------------------------------------------------------------
# 1. Gibbs histograms: the particle cloud converges to exp(-U)
# ---------------------------------------------------------------------------------------------


@one_cpu_thread()
def run_histograms(cfg: LangevinConfig) -> dict:
    """Euler-Maruyama particles on the double well (1-D) and the banana (2-D), with TV distance to Gibbs over time."""
    device = get_device()
    out = {}
    for name, potential, x0, step, edges in (
        ("double_well", double_well(), torch.full((cfg.num_particles, 1), 1.5), cfg.step_size, DW_EDGES),
        ("banana", banana(), torch.tensor([[2.0, 0.0]]).expand(cfg.num_particles, 2), cfg.step_size_2d, BANANA_EDGES),
    ):
        num_steps = _steps(cfg.total_time, step)
        thin = max(1, num_steps // cfg.num_snapshots)
        with Stopwatch(device) as clock:
            final, trajectory = L.euler_maruyama(
                potential, x0.to(device).contiguous(), step, num_steps,
                generator=seeded_generator(cfg.seed, device), thin=thin, return_trajectory=True,
            )
        seconds = clock.seconds
        probs = L.gibbs_bin_probabilities(potential, edges)
        tv = np.array([L.histogram_tv_distance(t, edges, probs) for t in trajectory])
        null_mean, null_sd = L.tv_null_moments(probs, cfg.num_particles)
        exact = potential.sample(cfg.num_particles, generator=seeded_generator(cfg.seed + 1))
        out[name] = {
            "final": final.cpu().numpy(),
            "times": np.arange(len(trajectory)) * thin * step,
            "tv": tv,
            "tv_exact_samples": L.histogram_tv_distance(exact, edges, probs),
            "null_mean": null_mean,
            "null_sd": null_sd,
            "probs": probs.numpy(),
            "edges": edges,
            "step_size": step,
            "num_steps": num_steps,
            "seconds": seconds,
        }
    return out


def plot_histograms(res: dict):
    """Final particle histograms against the Gibbs density: the double well (top) and the banana (bottom)."""
    fig = plt.figure(figsize=(7.5, 7.2), layout="constrained")
    grid_spec = fig.add_gridspec(2, 2, height_ratios=[1, 1.15])
    top = fig.add_subplot(grid_spec[0, :])
    bottom = [fig.add_subplot(grid_spec[1, 0]), fig.add_subplot(grid_spec[1, 1])]
    dw, ban = double_well(), banana()
    r = res["double_well"]
    ax = top
    ax.hist(r["final"][:, 0], bins=r["edges"], density=True, color=method_color("Euler-Maruyama"), alpha=0.45,
            label=f"Euler-Maruyama, {len(r['final']):,} particles")
    xs = torch.linspace(-2.5, 2.5, 600, dtype=torch.float64)
    ax.plot(xs, dw.density(xs[:, None]), color=method_color("exact"), label=r"Gibbs $e^{-U}/Z$")
    ax.set_xlabel(r"$x$")
    ax.set_ylabel(r"density $p(x)$")
    ax.set_title(rf"Double well $U(x) = (x^2-1)^2 + x/2$ at $t = {r['times'][-1]:.0f}$ ($h = {r['step_size']}$)")
    ax.set_ylim(0, 1.25 * ax.get_ylim()[1])
    ax.legend(loc="upper right")

    r = res["banana"]
    e1, e2 = r["edges"]
    g1, g2 = np.meshgrid(np.linspace(e1[0], e1[-1], 200), np.linspace(e2[0], e2[-1], 200), indexing="ij")
    dens = ban.density(torch.from_numpy(np.stack([g1.ravel(), g2.ravel()], 1))).numpy().reshape(g1.shape)
    levels = np.exp(-np.array([4.0, 2.0, 1.0, 0.5])) * dens.max()
    counts, _, _ = np.histogram2d(r["final"][:, 0], r["final"][:, 1], bins=[e1, e2])
    widths = np.outer(np.diff(e1), np.diff(e2))
    vmax = max(counts.max() / (len(r["final"]) * widths.min()), dens.max())
    for ax, image, title in (
        (bottom[0], counts / (len(r["final"]) * widths), f"Banana: particles at $t = {r['times'][-1]:.0f}$"),
        (bottom[1], r["probs"] / widths, "Banana: exact bin probabilities"),
    ):
        mesh = ax.pcolormesh(e1, e2, image.T, cmap="Blues", vmin=0, vmax=vmax, shading="flat")
        ax.contour(g1, g2, dens, levels=levels, colors=method_color("exact"), linewidths=0.9)
        ax.set_xlabel(r"$x_1$")
        ax.set_title(title, fontsize=11)
        ax.grid(False)
    bottom[0].set_ylabel(r"$x_2$")
    bottom[1].tick_params(labelleft=False)
    handle = plt.Line2D([], [], color=method_color("exact"), lw=0.9)
    fig.colorbar(mesh, ax=bottom, label="density", shrink=0.95)
    # below the panels, not on the banana's tails
    fig.legend([handle], [r"contours of $e^{-U}/Z$ (both banana panels)"], loc="outside lower center", fontsize=9)
    return fig


def plot_convergence(res: dict):
    """TV distance between the particle histogram and the Gibbs bin probabilities, against time."""
    fig, axes = plt.subplots(1, 2, figsize=(7.5, 3.9), sharey=True, layout="constrained")
    for ax, (name, title) in zip(axes, (("double_well", "Double well (1-D)"), ("banana", "Banana (2-D)"))):
        r = res[name]
        ax.semilogy(r["times"], r["tv"], marker="o", ms=3, color=method_color("Euler-Maruyama"),
                    label="Euler-Maruyama particles")
        ax.axhspan(r["null_mean"] - 2 * r["null_sd"], r["null_mean"] + 2 * r["null_sd"], color="0.6", alpha=0.35,
                   label="exact iid sampling: mean $\\pm$ 2 sd")
        ax.axhline(r["tv_exact_samples"], color=method_color("exact"), ls=":", label="one set of exact samples")
        ax.set_xlabel("time $t$")
        ax.set_title(title)
    axes[0].set_ylabel("TV distance to Gibbs")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=2, fontsize=9)
    return fig


# ---------------------------------------------------------------------------------------------
# 2. Discretisation bias of Euler-Maruyama as a function of the step size
# ---------------------------------------------------------------------------------------------


def _time_averaged_second_moment(potential, x0, step, cfg, seed, device):
    """Burn in, then average x^2 over time (every ~0.05 time units) and report mean and SE over particles."""
    burn = _steps(cfg.bias_burn_in_time, step)
    thin = max(1, int(round(0.05 / step)))
    blocks = max(1, _steps(cfg.bias_average_time, step) // thin)
    gen = seeded_generator(seed, device)
    x = L.euler_maruyama(potential, x0, step, burn, generator=gen)
    total = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for _ in range(blocks):  # accumulate on the fly: no trajectory is stored
        x = L.euler_maruyama(potential, x, step, thin, generator=gen)
        total += x[:, 0].double().pow(2)
    per_particle = total / blocks  # time average per particle: independent across particles
    return float(per_particle.mean()), float(per_particle.std() / math.sqrt(per_particle.numel()))


@one_cpu_thread()
def run_bias(cfg: LangevinConfig) -> dict:
    """Second moment of the Euler-Maruyama stationary law against the step size, with exact references.

    Gaussian :math:`U = x^2/2`: the chain is AR(1) with stationary variance :math:`1/(1 - h/2)` exactly.
    Double well: the exact stationary density of the chain from
    :func:`bdk.langevin.euler_maruyama_stationary_density_1d`, and :math:`E_{Gibbs}[x^2]` by quadrature.
    """
    device = get_device()
    gaussian, dw = L.Gaussian([0.0], 1.0), double_well()
    n = cfg.bias_num_particles
    cpu = seeded_generator(cfg.seed + 7)
    out = {"gaussian": {"step_sizes": np.array(cfg.bias_step_sizes_gaussian)},
           "double_well": {"step_sizes": np.array(cfg.bias_step_sizes_double_well)}}
    # Gaussian: exact AR(1) variance
    res = out["gaussian"]
    res["exact"] = np.array([1.0 / (1.0 - h / 2.0) for h in res["step_sizes"]])
    res["gibbs"] = 1.0
    x0 = gaussian.sample(n, generator=cpu).to(device)
    measured = [_time_averaged_second_moment(gaussian, x0, h, cfg, cfg.seed + 10 + i, device)
                for i, h in enumerate(res["step_sizes"])]
    res["measured"], res["measured_se"] = np.array(measured).T
    # double well: exact stationary density of the chain on a grid
    res = out["double_well"]
    grid = _chain_grid()
    dx = float(grid[1] - grid[0])
    gibbs_m2 = float((dw.density(grid[:, None]) * grid**2).sum() * dx)
    res["gibbs"] = gibbs_m2
    res["exact"] = np.array([
        float((L.euler_maruyama_stationary_density_1d(dw, grid, h) * grid**2).sum() * dx) for h in res["step_sizes"]
    ])
    x0 = dw.sample(n, generator=cpu).to(device)
    measured = [_time_averaged_second_moment(dw, x0, h, cfg, cfg.seed + 20 + i, device)
                for i, h in enumerate(res["step_sizes"])]
    res["measured"], res["measured_se"] = np.array(measured).T
    for res in out.values():
        res["bias"] = np.abs(res["measured"] - res["gibbs"])
        res["exact_bias"] = np.abs(res["exact"] - res["gibbs"])
        res["slope_measured"] = fit_loglog_slope(res["step_sizes"], res["bias"])
        res["slope_exact"] = fit_loglog_slope(res["step_sizes"], res["exact_bias"])
    return out


def plot_bias(res: dict):
    """Log-log plot of the bias of the second moment against the step size, with fitted slopes."""
    fig, axes = plt.subplots(2, 1, figsize=(7.5, 7.0), layout="constrained")
    titles = {"gaussian": r"Gaussian $U = x^2/2$: bias $|\mathrm{Var}_h - 1|$",
              "double_well": r"Double well: bias $|E_h[x^2] - E_{\mathrm{Gibbs}}[x^2]|$"}
    exact_labels = {"gaussian": r"exact AR(1): $\frac{1}{1 - h/2} - 1$",
                    "double_well": "exact stationary law of the chain (grid)"}
    for ax, name in zip(axes, ("gaussian", "double_well")):
        r = res[name]
        h = r["step_sizes"]
        ax.loglog(h, r["exact_bias"], color=method_color("exact"),
                  label=f"{exact_labels[name]}, slope {r['slope_exact']:.2f}")
        ax.errorbar(h, r["bias"], yerr=2 * r["measured_se"], fmt="o", color=method_color("Euler-Maruyama"),
                    label=f"Euler-Maruyama particles (±2 SE), slope {r['slope_measured']:.2f}")
        ax.set_xticks(h)
        ax.set_xticklabels([f"{v:g}" for v in h])
        ax.minorticks_off()
        ax.set_xlabel("step size $h$")
        ax.set_ylabel("bias of $E[x^2]$")
        ax.set_title(titles[name])
        ax.legend(loc="upper left", fontsize=9)
    return fig


# ---------------------------------------------------------------------------------------------
# 3. The Fokker-Planck equation: density flow from a narrow start, with particles on top
# ---------------------------------------------------------------------------------------------


@one_cpu_thread()
def run_fokker_planck(cfg: LangevinConfig) -> dict:
    """Solve the Fokker-Planck equation from a narrow Gaussian at x = 1.5 and move particles beside it."""
    device = get_device()
    dw = double_well()
    grid = torch.linspace(-2.5, 2.5, cfg.fp_num_cells, dtype=torch.float64)
    dx = float(grid[1] - grid[0])
    edges_cells = torch.cat([grid - dx / 2, grid[-1:] + dx / 2])
    start_mean, start_sd = 1.5, 0.1
    cdf = torch.special.ndtr((edges_cells - start_mean) / start_sd)
    p0 = (cdf[1:] - cdf[:-1]) / dx  # cell averages of N(1.5, 0.1^2)
    dt_max = L.fokker_planck_max_dt(dw, grid)
    times = np.array(cfg.fp_times)
    # the snapshot times are multiples of 0.05; take the largest dt <= 0.9 dt_max that divides 0.05
    quantum = 0.05
    if any(abs(t / quantum - round(t / quantum)) > 1e-9 for t in times):
        raise ValueError(f"fp_times must be multiples of {quantum}, got {tuple(times)}.")
    dt = quantum / math.ceil(quantum / (0.9 * dt_max))
    nonzero = times[times > 0]
    densities = [p0]
    p = p0
    previous = 0.0
    with Stopwatch() as clock:
        for t in nonzero:
            k = int(round((t - previous) / dt))
            p = L.fokker_planck_1d(dw, grid, p, dt, k)
            densities.append(p)
            previous += k * dt
    fp_seconds = clock.seconds
    long_run = L.fokker_planck_1d(dw, grid, p, dt, int(round(30.0 / dt)))
    gibbs_discrete = torch.exp(-dw.U(grid[:, None]))
    gibbs_discrete = gibbs_discrete / (gibbs_discrete.sum() * dx)
    # particles from the same initial law, snapshots at the same times
    gen = seeded_generator(cfg.seed + 3, device)
    x = start_mean + start_sd * torch.randn(cfg.num_particles, 1, generator=gen, device=device)
    h = cfg.fp_particle_step_size
    snapshots = [x.cpu().numpy()[:, 0]]
    previous = 0.0
    for t in nonzero:
        k = int(round((t - previous) / h))
        x = L.euler_maruyama(dw, x, h, k, generator=gen)
        snapshots.append(x.cpu().numpy()[:, 0])
        previous += k * h
    # compare histograms with the solver's bin masses: 5 cells per bin
    per_bin = 5
    usable = (cfg.fp_num_cells // per_bin) * per_bin
    offset = (cfg.fp_num_cells - usable) // 2
    bin_edges = edges_cells[offset:offset + usable + 1:per_bin].numpy()
    tv, null = [], []
    for dens, snap in zip(densities, snapshots):
        probs = (dens[offset:offset + usable] * dx).reshape(-1, per_bin).sum(1)
        tv.append(L.histogram_tv_distance(torch.from_numpy(snap), bin_edges, probs))
        null.append(L.tv_null_moments(probs, cfg.num_particles))
    masses = np.array([float(d.sum() * dx) for d in densities])
    return {
        "grid": grid.numpy(),
        "dx": dx,
        "dt": dt,
        "dt_max": dt_max,
        "times": times,
        "densities": torch.stack(densities).numpy(),
        "particles": np.stack(snapshots),
        "bin_edges": bin_edges,
        "tv": np.array(tv),
        "null_mean": np.array([m for m, _ in null]),
        "null_sd": np.array([s for _, s in null]),
        "mass_error": float(np.abs(masses - masses[0]).max()),
        "min_density": float(min(float(d.min()) for d in densities)),
        "steady_state_error": float((long_run - gibbs_discrete).abs().max()),
        "gibbs_density": dw.density(grid[:, None]).numpy(),
        "fp_seconds": fp_seconds,
    }


def plot_fokker_planck(res: dict):
    """Small multiples: the Fokker-Planck density and the particle histogram at the same times."""
    times = res["times"]
    rows = (len(times) + 1) // 2
    fig, axes = plt.subplots(rows, 2, figsize=(7.5, 2.3 * rows + 0.9), sharex=True, sharey=True,
                             layout="constrained")
    for ax, t, dens, snap, tv, m, s in zip(axes.ravel(), times, res["densities"], res["particles"], res["tv"],
                                            res["null_mean"], res["null_sd"]):
        ax.hist(snap, bins=res["bin_edges"], density=True, color=method_color("Euler-Maruyama"), alpha=0.45,
                label="particles (Euler-Maruyama)")
        ax.plot(res["grid"], dens, color="#D55E00", label="Fokker-Planck solver")
        ax.plot(res["grid"], res["gibbs_density"], color=method_color("exact"), ls="--", lw=1.2,
                label=r"Gibbs $e^{-U}/Z$")
        ax.set_title(f"$t = {t:g}$: TV {tv:.3f} (noise {m:.3f} ± {s:.3f})", fontsize=10)
        ax.set_ylim(0, 2.0)
    for ax in axes[-1]:
        ax.set_xlabel(r"$x$")
    for ax in axes[:, 0]:
        ax.set_ylabel(r"$p(x, t)$")
    handles, labels = axes.ravel()[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=9)
    fig.suptitle("Density flow from a narrow start to the Gibbs density")
    return fig


# ---------------------------------------------------------------------------------------------
# 4. MALA: exact at a large step, acceptance -> 1 as the step -> 0
# ---------------------------------------------------------------------------------------------


@one_cpu_thread()
def run_mala(cfg: LangevinConfig) -> dict:
    """Euler-Maruyama against MALA at one large step (both started from exact samples), and an acceptance sweep."""
    device = get_device()
    dw = double_well()
    h = cfg.mala_step_size
    num_steps = _steps(cfg.mala_time, h)
    x0 = dw.sample(cfg.num_particles, generator=seeded_generator(cfg.seed + 4)).to(device)
    em = L.euler_maruyama(dw, x0, h, num_steps, generator=seeded_generator(cfg.seed + 5, device))
    ma, acceptance = L.mala(dw, x0, h, num_steps, generator=seeded_generator(cfg.seed + 6, device))
    probs = L.gibbs_bin_probabilities(dw, DW_EDGES)
    null_mean, null_sd = L.tv_null_moments(probs, cfg.num_particles)
    grid = _chain_grid()
    em_density = L.euler_maruyama_stationary_density_1d(dw, grid, h)
    dx = float(grid[1] - grid[0])
    em_exact_tv = float(0.5 * (em_density - dw.density(grid[:, None])).abs().sum() * dx)
    # acceptance sweep, from exact samples
    x0 = dw.sample(cfg.acceptance_num_particles, generator=seeded_generator(cfg.seed + 8)).to(device)
    rates = []
    for i, step in enumerate(cfg.acceptance_step_sizes):
        _, rate = L.mala(dw, x0, step, cfg.acceptance_num_steps, generator=seeded_generator(cfg.seed + 30 + i, device))
        rates.append(rate)
    rates = np.array(rates)
    steps = np.array(cfg.acceptance_step_sizes)
    small = steps <= 0.03
    return {
        "step_size": h,
        "num_steps": num_steps,
        "em": em.cpu().numpy(),
        "mala": ma.cpu().numpy(),
        "acceptance": acceptance,
        "tv_em": L.histogram_tv_distance(em, DW_EDGES, probs),
        "tv_mala": L.histogram_tv_distance(ma, DW_EDGES, probs),
        "tv_em_exact": em_exact_tv,
        "bin_probs": probs.numpy(),
        "null_mean": null_mean,
        "null_sd": null_sd,
        "grid": grid.numpy(),
        "em_density": em_density.numpy(),
        "gibbs_density": dw.density(grid[:, None]).numpy(),
        "acceptance_step_sizes": steps,
        "acceptance_rates": rates,
        "rejection_slope": fit_loglog_slope(steps[small], 1 - rates[small]),
        "rejection_num_proposals": cfg.acceptance_num_particles * cfg.acceptance_num_steps,
    }


def plot_mala(res: dict):
    """EM and MALA at one large step against Gibbs (densities and per-bin deviations); rejection rate against step."""
    fig = plt.figure(figsize=(7.5, 7.4), layout="constrained")
    grid_spec = fig.add_gridspec(2, 2)
    axes = [fig.add_subplot(grid_spec[0, :]), fig.add_subplot(grid_spec[1, 0]), fig.add_subplot(grid_spec[1, 1])]
    edges = DW_EDGES
    centres = 0.5 * (edges[1:] + edges[:-1])
    ax = axes[0]
    ax.plot(res["grid"], res["gibbs_density"], color=method_color("exact"), label=r"Gibbs $e^{-U}/Z$")
    ax.plot(res["grid"], res["em_density"], color=method_color("Euler-Maruyama"), ls="--",
            label="stationary law of Euler-Maruyama (exact)")
    for name, key, marker in (("Euler-Maruyama", "em", "o"), ("MALA", "mala", "s")):
        counts, _ = np.histogram(res[key][:, 0], bins=edges)
        ax.plot(centres, counts / (len(res[key]) * np.diff(edges)), ls="none", marker=marker, ms=3.5,
                color=method_color(name), label=f"{name} histogram (TV {res['tv_' + key]:.3f})")
    ax.set_xlim(-2.2, 2.2)
    ax.set_xlabel(r"$x$")
    ax.set_ylabel(r"density $p(x)$")
    ax.set_title(f"Step $h = {res['step_size']}$, both started from exact samples")
    ax.legend(loc="upper right", fontsize=9)
    ax = axes[1]
    probs = res["bin_probs"]
    n = len(res["em"])
    se = np.sqrt(probs * (1 - probs) / n)
    keep = probs > 5 / n
    for name, key, marker in (("Euler-Maruyama", "em", "o"), ("MALA", "mala", "s")):
        counts, _ = np.histogram(res[key][:, 0], bins=edges)
        z = (counts / n - probs) / se
        ax.plot(centres[keep], z[keep], marker=marker, ms=3.5, lw=1, color=method_color(name), label=name)
    ax.axhspan(-2, 2, color="0.6", alpha=0.3, label="±2 SE")
    ax.set_xlabel(r"$x$ (bin centre)")
    ax.set_ylabel("(histogram − exact) / SE")
    ax.set_title("Deviation from Gibbs per bin", fontsize=11)
    low, high = ax.get_ylim()
    ax.set_ylim(low - 0.3 * (high - low), high)  # room for the legend below the data
    ax.legend(loc="lower center", ncol=3, fontsize=8, handlelength=1.5, columnspacing=1.0)
    ax = axes[2]
    steps, rates = res["acceptance_step_sizes"], res["acceptance_rates"]
    ax.loglog(steps, 1 - rates, marker="o", color=method_color("MALA"),
              label=f"MALA, slope {res['rejection_slope']:.2f}\n(fit for $h \\leq 0.03$)")
    ref = (1 - rates[0]) * (steps / steps[0]) ** 1.5
    ax.loglog(steps, ref, ls="--", color="0.4", label=r"$\propto h^{3/2}$")
    ax.set_xlabel("step size $h$")
    ax.set_ylabel("rejection rate")
    ax.set_title("MALA: rejections vanish as $h \\to 0$", fontsize=11)
    ax.legend(loc="upper left", fontsize=8)
    return fig


# ---------------------------------------------------------------------------------------------
# 5. Animation: a point mass relaxing to the Gibbs density
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _fixed_dpi_animation_class():
    """FuncAnimation with a frame dpi of its own (made on first use: matplotlib is imported lazily here)."""
    class FixedDpiAnimation(FuncAnimation):
        """A FuncAnimation whose ``save`` (and so ``to_jshtml``) defaults to ``frame_dpi``, not ``savefig.dpi``."""

        frame_dpi = None

        def save(self, filename, writer=None, fps=None, dpi=None, *args, **kwargs):
            return super().save(filename, writer, fps, dpi if dpi is not None else self.frame_dpi, *args, **kwargs)

        def to_jshtml(self, *args, **kwargs):
            """matplotlib's player, with the first frame as the image's initial ``src``: the page shows a
            picture even before (or without) JavaScript, and no ``<img>`` is left without a source."""
            html = super().to_jshtml(*args, **kwargs)
            first = re.search(r'frames\[0\] = "(data:image/[a-z]+;base64,[^"]*)"', html)
            if first:
                html = re.sub(r'<img id="(_anim_img[0-9a-f]+)">', lambda m: f'<img id="{m.group(1)}" src="{first.group(1)}">',
                              html, count=1)
            return html

    return FixedDpiAnimation


@one_cpu_thread()
def animate_relaxation(
    num_frames: int = 32,
    num_particles: int = 10_000,
    final_time: float = 4.0,
    step_size: float = 0.004,
    num_cells: int = 151,
    start: float = 1.5,
    seed: int = 0,
    dpi: int = 72,
    interval: int = 200,
):
    r"""Animate Langevin particles and the Fokker-Planck density relaxing from a point mass to Gibbs.

    All ``num_particles`` particles start at ``x = start`` on the chapter's double well
    :math:`U(x) = (x^2 - 1)^2 + x/2` and move by Euler-Maruyama steps of ``step_size``
    (:func:`bdk.langevin.euler_maruyama`); beside them the finite-volume solution of the Fokker-Planck
    equation :math:`\partial_t p = \partial_x (U' p + \partial_x p)` starts from all its mass in the cell at
    ``start`` (:func:`bdk.langevin.fokker_planck_1d`). Each frame draws the particle histogram, the
    solver's density and the stationary Gibbs density :math:`e^{-U}/Z`. The frame times are 0 and then
    geometrically spaced up to ``final_time``, because the flow is fast at first (sliding into the right
    well) and slow later (crossing the barrier). Introduced in the chapter "Langevin dynamics"
    (``book/langevin.ipynb``), :cite:p:`risken1996fokker`.

    The figure is closed before returning, so that a notebook shows only the animation; display it with
    ``IPython.display.HTML(anim.to_jshtml())`` (no ffmpeg needed).

    Args:
        num_frames: number of frames (at least 2).
        num_particles: Euler-Maruyama particles.
        final_time: time of the last frame.
        step_size: Euler-Maruyama time step (the frame times are rounded to multiples of it).
        num_cells: finite-volume cells on ``[-2.5, 2.5]``.
        start: the starting point, inside ``(-2.5, 2.5)``.
        seed: seed of the particles' generator.
        dpi: resolution of the saved frames, also in ``to_jshtml`` (the page embeds every frame as
            a PNG: keep it small; 72 dpi gives about 45 kB a frame).
        interval: milliseconds between frames when playing.

    Returns:
        A ``matplotlib.animation.FuncAnimation`` with ``num_frames`` frames; its attribute
        ``frame_times`` holds the simulated time of every frame (NumPy array).

    Raises:
        ValueError: if ``num_frames < 2``, a size is not positive, or ``start`` is outside the grid.
    """
    if int(num_frames) != num_frames or num_frames < 2:
        raise ValueError(f"num_frames must be an integer >= 2, got {num_frames!r}.")
    for name, value in (("num_particles", num_particles), ("final_time", final_time),
                        ("step_size", step_size), ("num_cells", num_cells), ("dpi", dpi)):
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value!r}.")
    if not -2.5 < start < 2.5:
        raise ValueError(f"start must lie inside the grid (-2.5, 2.5), got {start!r}.")
    num_frames = int(num_frames)
    dw = double_well()
    # frame times: 0, then geometric from final_time / 150 to final_time, rounded to the step size
    times = np.concatenate([[0.0], np.geomspace(final_time / 150, final_time, num_frames - 1)])
    steps = np.round(times / step_size).astype(int)
    steps = np.maximum.accumulate(steps)
    times = steps * step_size
    # particles
    gen = seeded_generator(seed)
    x = torch.full((int(num_particles), 1), float(start), dtype=torch.float64)
    edges = np.linspace(-2.5, 2.5, 51)
    histograms = []
    done = 0
    for k in steps:
        if k > done:
            x = L.euler_maruyama(dw, x, step_size, int(k - done), generator=gen)
            done = int(k)
        counts, _ = np.histogram(x[:, 0].numpy(), bins=edges)
        histograms.append(counts / (len(x) * np.diff(edges)))
    # Fokker-Planck solution from all mass in one cell
    grid = torch.linspace(-2.5, 2.5, int(num_cells), dtype=torch.float64)
    dx = float(grid[1] - grid[0])
    p = torch.zeros_like(grid)
    p[int(torch.argmin((grid - start).abs()))] = 1.0 / dx
    dt = 0.9 * L.fokker_planck_max_dt(dw, grid)
    densities, fp_done = [], 0
    for t in times:
        k = int(round(t / dt))
        if k > fp_done:
            p = L.fokker_planck_1d(dw, grid, p, dt, k - fp_done)
            fp_done = k
        densities.append(p.numpy().copy())
    gibbs = dw.density(grid[:, None]).numpy()

    fig, ax = plt.subplots(figsize=(6.6, 3.5), dpi=dpi)
    bars = ax.stairs(histograms[0], edges, fill=True, color=method_color("Euler-Maruyama"), alpha=0.4,
                     label=f"Euler-Maruyama particles ({int(num_particles):,})")
    (line,) = ax.plot(grid.numpy(), densities[0], color="#D55E00", label="Fokker-Planck solution")
    ax.plot(grid.numpy(), gibbs, color=method_color("exact"), ls="--", lw=1.4,
            label=r"Gibbs $e^{-U}/Z$ (stationary)")
    top = 2.0 * gibbs.max()
    ax.set_ylim(0, top)
    ax.set_xlim(-2.5, 2.5)
    ax.set_xlabel(r"$x$")
    ax.set_ylabel(r"density $p(x, t)$")
    ax.legend(loc="upper left", fontsize=10)
    title = ax.set_title("")

    def draw(i):
        bars.set_data(histograms[i])
        line.set_ydata(densities[i])
        note = "   (all mass at $x = %g$, off the scale)" % start if i == 0 else ""
        title.set_text(f"$t = {times[i]:.3f}$" + note)
        return bars, line, title

    draw(0)
    fig.tight_layout()
    anim = _fixed_dpi_animation_class()(fig, draw, frames=num_frames, interval=interval, blit=False)
    anim.frame_dpi = dpi
    anim.frame_times = times
    plt.close(fig)
    return anim


# ---------------------------------------------------------------------------------------------
# records: what ``--record`` keeps of a run (histograms of the particles, never the particles)
# ---------------------------------------------------------------------------------------------


def histograms_record(res: dict) -> dict:
    """What ``data/records/langevin-histograms.json`` keeps: every number of :func:`run_histograms` but the
    final particles, which are replaced by their counts in the bins of the TV distance (``final_counts``:
    1-D on the double well, 2-D on the banana) and their number."""
    out = {}
    for name, r in res.items():
        final = np.asarray(r["final"])
        if name == "banana":
            counts, _, _ = np.histogram2d(final[:, 0], final[:, 1], bins=[np.asarray(e) for e in r["edges"]])
        else:
            counts, _ = np.histogram(final[:, 0], bins=np.asarray(r["edges"]))
        out[name] = {**{k: v for k, v in r.items() if k != "final"}, "final_counts": counts.astype(np.int64),
                     "num_particles": len(final)}
    return out


def fokker_planck_record(res: dict) -> dict:
    """What ``data/records/langevin-fokker-planck.json`` keeps: every number of :func:`run_fokker_planck`
    but the particle snapshots, which are replaced by their counts in ``bin_edges`` at each time
    (``particle_counts``, one row per time) and their number."""
    particles = np.asarray(res["particles"])
    edges = np.asarray(res["bin_edges"])
    counts = np.stack([np.histogram(snap, bins=edges)[0] for snap in particles]).astype(np.int64)
    kept = {k: v for k, v in res.items() if k != "particles"}
    return {**kept, "particle_counts": counts, "num_particles": particles.shape[1]}


def mala_record(res: dict) -> dict:
    """What ``data/records/langevin-mala.json`` keeps: every number of :func:`run_mala` but the final
    Euler-Maruyama and MALA particles, which are replaced by their counts in the bins of the TV distance
    (``em_counts``, ``mala_counts`` on ``bin_edges``: enough for both panels of :func:`plot_mala`)."""
    kept = {k: v for k, v in res.items() if k not in ("em", "mala")}
    counts = {f"{k}_counts": np.histogram(np.asarray(res[k])[:, 0], bins=DW_EDGES)[0].astype(np.int64)
              for k in ("em", "mala")}
    return {**kept, **counts, "bin_edges": DW_EDGES, "num_particles": len(res["em"])}


# ---------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------

_CHAPTER = "book/langevin.ipynb"
for _name, _run, _plot, _record, _description in (
    ("langevin-histograms", run_histograms, lambda r: {"histograms": plot_histograms(r), "convergence": plot_convergence(r)},
     histograms_record, "Euler-Maruyama particles converge to the Gibbs density (double well, banana)"),
    ("langevin-bias", run_bias, lambda r: {"bias": plot_bias(r)}, None,
     "discretisation bias of Euler-Maruyama against the step size"),
    ("langevin-fokker-planck", run_fokker_planck, lambda r: {"fokker_planck": plot_fokker_planck(r)},
     fokker_planck_record, "Fokker-Planck density flow with particles on top"),
    ("langevin-mala", run_mala, lambda r: {"mala": plot_mala(r)}, mala_record,
     "MALA is exact at a large step; acceptance against step size"),
):
    register(Experiment(name=_name, chapter=_CHAPTER, description=_description, configs=CONFIGS, run=_run, figures=_plot,
                        record=_record))
