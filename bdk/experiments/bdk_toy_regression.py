"""Experiments of chapter 6's toy regression (§3.3 of :cite:t:`korattikara2015bdk`, Figure 2).

:func:`toy_regression` runs the cubic toy ``y = x^3 + noise``: an HMC reference, SGD, an SGLD teacher
and the distilled Gaussian student (mean and log-variance), scored by the KL from the reference's
predictive on a grid; :func:`plot_toy_regression` draws the predictive means and ±3 sd bands.
Registered as ``bdk-toy-regression`` (``python -m bdk reproduce bdk-toy-regression``).
"""

from __future__ import annotations

import math
import time

import matplotlib.pyplot as plt
import torch
from torch import nn

from .. import distill as D
from .._runtime import get_device, one_cpu_thread, seeded_generator
from ..data import toy_regression_1d
from ..langevin import hmc
from ..plotting import method_color
from .distill_common import (adam_student, alive_units, checkpointer, kl_label, paper_numbers, run_distiller,
                             toy_run_note, train_map)
from .distill_configs import TOY_REGRESSION_CONFIGS, ToyRegressionConfig
from .registry import Experiment, register
from .tables import markdown_table

__all__ = [
    "ToyRegressionConfig",
    "TOY_REGRESSION_CONFIGS",
    "regression_student",
    "toy_regression",
    "toy_regression_header",
    "toy_regression_table",
    "plot_toy_regression",
    "paper_numbers",
]


def regression_student(num_inputs: int, hidden: int) -> nn.Module:
    """The Gaussian student: a ``num_inputs``-``hidden``-2 MLP whose outputs are the mean and the log-variance."""
    return D.mlp((num_inputs, hidden, 2))


@one_cpu_thread()
def toy_regression(cfg: ToyRegressionConfig) -> dict:
    """Figure 2: HMC reference, SGD, SGLD and the distilled Gaussian student on ``y = x^3 + noise``."""
    device = get_device()
    torch.manual_seed(cfg.seed)
    x, y = toy_regression_1d(cfg.num_points, cfg.noise_std, seed=cfg.data_seed, device=device)
    tau = 1.0 / cfg.noise_std**2
    sizes = (1, cfg.hidden, 1)
    P = D.mlp_num_params(sizes)
    grid = torch.linspace(*cfg.plot_limits, cfg.grid_size, device=device).unsqueeze(1)
    seconds = {}

    t0 = time.perf_counter()
    g = seeded_generator(cfg.seed, device)
    U = D.mlp_potential(x, y, sizes, cfg.prior_precision, "regression", tau)
    x0 = torch.randn(cfg.hmc_chains, P, device=device, generator=g) / math.sqrt(cfg.prior_precision) * 0.3
    samples, acceptance = hmc(U, x0, cfg.hmc_step_size, cfg.hmc_leapfrog, cfg.hmc_samples, burn_in=cfg.hmc_burn_in, generator=g)

    def moments(theta):
        f = torch.cat([D.mlp_forward_flat(c, grid, sizes).squeeze(-1) for c in theta.reshape(-1, P).split(4096)])
        return {"mean": f.mean(0), "var": f.var(0) + 1 / tau}

    exact = moments(samples)
    half_a, half_b = moments(samples[:, : cfg.hmc_chains // 2]), moments(samples[:, cfg.hmc_chains // 2:])
    seconds["HMC"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed + 1)
    sgd_model = D.mlp(sizes).to(device)
    train_map(sgd_model, x, y, x.shape[0], cfg.prior_precision, cfg.sgd_lr, cfg.sgd_iterations, cfg.batch_size,
              seeded_generator(cfg.seed + 1, device), "regression", tau)
    with torch.no_grad():
        sgd = {"mean": sgd_model(grid).squeeze(-1), "var": torch.full((cfg.grid_size,), 1 / tau, device=device)}
    seconds["SGD"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed + 2)
    g = seeded_generator(cfg.seed + 2, device)
    teacher = D.SGLDTeacher(D.mlp(sizes).to(device), x.shape[0], cfg.prior_precision, cfg.teacher_lr,
                            likelihood="regression", noise_precision=tau, generator=g)
    # One student per candidate rate, all distilled from the same teacher chain; the reported student is
    # the one closest to the SGLD ensemble (a criterion that does not use the HMC reference).
    rates = cfg.student_lr_candidates or (cfg.student_lr,)
    candidates = {f"lr={lr:g}": adam_student(regression_student(1, cfg.hidden).to(device), lr, cfg.student_prior_precision,
                                             cfg.iterations - cfg.burn_in, cfg.student_final_lr_fraction)
                  for lr in rates}
    distiller = D.Distiller(
        teacher, candidates, x, y, D.uniform_inputs(cfg.plot_limits[0], cfg.plot_limits[1], device=device),
        task="regression", batch_size=cfg.batch_size, student_batch_size=cfg.student_batch_size, burn_in=cfg.burn_in,
        thin=cfg.thin, ensemble_inputs={"grid": grid}, generator=g,
    )
    run_distiller(distiller, cfg.iterations, checkpointer("bdk-toy-regression", cfg, cfg.checkpoint_every),
                  "distilled SGLD (cubic)")
    sgld = distiller.ensemble.result("grid")
    to_sgld = {}
    for name, cand in candidates.items():
        m, v = cand.predict(grid, "regression")
        to_sgld[name] = float(D.gaussian_kl(sgld["mean"], sgld["var"], m, v).mean())
    chosen = min(to_sgld, key=to_sgld.get)
    student = candidates[chosen]
    s_mean, s_var = student.predict(grid, "regression")
    seconds["SGLD + student"] = time.perf_counter() - t0

    inside = (grid[:, 0] >= -4) & (grid[:, 0] <= 4)

    def kl(pred, where=slice(None)):
        return float(D.gaussian_kl(exact["mean"], exact["var"], pred["mean"], pred["var"])[where].mean())

    student_pred = {"mean": s_mean, "var": s_var}
    preds = {"HMC": exact, "SGD": sgd, "SGLD": sgld, "Distilled SGLD": student_pred}
    return {
        "x": x.cpu(), "y": y.cpu(), "grid": grid[:, 0].cpu(),
        "predictive": {k: {"mean": v["mean"].cpu(), "sd": v["var"].sqrt().cpu()} for k, v in preds.items()},
        "kl": {k: kl(v) for k, v in preds.items() if k != "HMC"},
        "kl_data_range": {k: kl(v, inside) for k, v in preds.items() if k != "HMC"},
        "kl_student_to_sgld": float(D.gaussian_kl(sgld["mean"], sgld["var"], s_mean, s_var).mean()),
        "alive_units": alive_units(student.model, *cfg.plot_limits),
        "student_candidates": {n: {"kl_to_sgld": to_sgld[n], "alive_units": alive_units(c.model, *cfg.plot_limits),
                                   "kl_to_hmc": kl(dict(zip(("mean", "var"), c.predict(grid, "regression"))))}
                               for n, c in candidates.items()},
        "student_chosen": chosen,
        "kl_hmc_halves": float(D.gaussian_kl(half_a["mean"], half_a["var"], half_b["mean"], half_b["var"]).mean()),
        "hmc_acceptance": acceptance,
        "hmc_num_samples": int(samples.shape[0] * samples.shape[1]),
        "sgld_num_samples": distiller.ensemble.count,
        "seconds": seconds,
        "total_seconds": sum(seconds.values()),
    }


def toy_regression_header(results: dict, paper: dict) -> str:
    """The line above the table of the cubic toy regression: how the run was made (its numbers are in the table)."""
    return toy_run_note(results, "the paper's Figure 2 (§3.3) has no numbers, so the table gives ours only.")


def toy_regression_table(results: dict) -> str:
    """KL from the HMC predictive on the whole range and inside the data range, as a Markdown table."""
    kl, kl_in = results["kl"], results["kl_data_range"]
    rows = [[m, f"{kl[m]:.3f}", f"{kl_in[m]:.3f}"] for m in ("SGD", "SGLD", "Distilled SGLD")]
    rows.append(["HMC half vs half (noise floor)", f"{results['kl_hmc_halves']:.4f}", None])
    rows.append(["student vs the SGLD ensemble", f"{results['kl_student_to_sgld']:.3f}", None])
    return markdown_table(rows, ["predictive", "KL from HMC, $x \\in [-6, 6]$", "KL from HMC, $x \\in [-4, 4]$"])


def plot_toy_regression(results: dict):
    """Figure 2 of the paper, ours: predictive mean and ±3 standard deviations for each method."""
    names = ["HMC", "SGD", "SGLD", "Distilled SGLD"]
    colors = {"HMC": method_color("HMC"), "SGD": method_color("SGD"), "SGLD": method_color("SGLD"),
              "Distilled SGLD": method_color("student")}
    fig, axes = plt.subplots(2, 2, figsize=(7.2, 6.6), sharex=True, sharey=True, constrained_layout=True)
    grid = results["grid"].numpy()
    for ax, name in zip(axes.flat, names):
        pred = results["predictive"][name]
        m, sd = pred["mean"].numpy(), pred["sd"].numpy()
        ax.plot(grid, grid**3, color="0.5", lw=1, ls="--", label="$y = x^3$")
        ax.plot(grid, m, color=colors[name], label="predictive mean")
        ax.fill_between(grid, m - 3 * sd, m + 3 * sd, color=colors[name], alpha=0.25, label="± 3 sd")
        ax.scatter(results["x"][:, 0], results["y"], s=12, c="k", zorder=3, label="data")
        kl = "" if name == "HMC" else f" (KL {kl_label(results['kl'][name])})"
        ax.set_title(name + kl)
        ax.set_ylim(-150, 150)
    for ax in axes[-1]:
        ax.set_xlabel("$x$")
    for ax in axes[:, 0]:
        ax.set_ylabel("$y$")
    # one legend below the panels, off the data (the figure's caption carries the title)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=4, frameon=False)
    return fig


register(Experiment("bdk-toy-regression", "book/bdk-toy-regression.ipynb", "BDK §3.3: the cubic toy regression (Figure 2)",
                    TOY_REGRESSION_CONFIGS, toy_regression))
