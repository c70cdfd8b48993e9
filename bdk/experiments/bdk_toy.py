"""Experiments of the opening page of chapter 6, Bayesian dark knowledge :cite:p:`korattikara2015bdk`:
the 2-D toy classification (§3.1, Table 2 and Figure 1).

:func:`toy_classification` runs the HMC reference, SGD, SGLD and three distilled students on the toy
problem and scores them by the KL from the reference on a grid; :func:`table2` sets our numbers
beside the paper's (``data/paper_numbers.json``). Registered as ``bdk-toy-classification``
(``python -m bdk reproduce bdk-toy-classification``).
"""

from __future__ import annotations

import math
import time
from typing import Mapping

import matplotlib.pyplot as plt
import torch

from .. import distill as D
from .._runtime import get_device, one_cpu_thread, seeded_generator
from ..data import TOY2D_DOMAIN, toy_classification_2d
from ..langevin import hmc
from .distill_common import (adam_student, alive_units, checkpointer, kl_label, num_params, paper_numbers,
                             run_distiller, toy_run_note, train_map)
from .distill_configs import TOY_CLASSIFICATION_CONFIGS, ToyClassificationConfig
from .registry import Experiment, register
from .tables import markdown_table

__all__ = [
    "ToyClassificationConfig",
    "TOY_CLASSIFICATION_CONFIGS",
    "TOY_STUDENTS",
    "toy_classification",
    "table2",
    "toy_students_table",
    "toy_classification_header",
    "toy_classification_tables",
    "square_grid",
    "plot_class_maps",
    "plot_toy_classification",
    "alive_units",
    "paper_numbers",
]


TOY_STUDENTS = {"2-10-2": (2, 10, 2), "2-100-2": (2, 100, 2), "2-10-10-2": (2, 10, 10, 2)}


def square_grid(limits=TOY2D_DOMAIN, size: int = 50, device=None) -> torch.Tensor:
    """The ``size x size`` grid over the square ``limits^2``, as ``(size^2, 2)`` points (``x_1`` fastest)."""
    lin = torch.linspace(limits[0], limits[1], size, device=device)
    gx, gy = torch.meshgrid(lin, lin, indexing="xy")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)


@one_cpu_thread()
def toy_classification(cfg: ToyClassificationConfig) -> dict:
    """Table 2 and Figure 1: KL from the HMC predictive to SGD, SGLD and the distilled students on a grid."""
    device = get_device()
    torch.manual_seed(cfg.seed)
    x, y = toy_classification_2d(cfg.num_per_class, seed=cfg.data_seed, device=device)
    sizes = (2, 10, 2)
    P = D.mlp_num_params(sizes)
    grid = square_grid(TOY2D_DOMAIN, cfg.grid_size, device)
    seconds = {}

    # Reference: many-chain HMC on the 52 parameters, full batch.
    t0 = time.perf_counter()
    g = seeded_generator(cfg.seed, device)
    U = D.mlp_potential(x, y, sizes, cfg.prior_precision)
    x0 = torch.randn(cfg.hmc_chains, P, device=device, generator=g) / math.sqrt(cfg.prior_precision)
    samples, acceptance = hmc(U, x0, cfg.hmc_step_size, cfg.hmc_leapfrog, cfg.hmc_samples, burn_in=cfg.hmc_burn_in, generator=g)
    chains_a, chains_b = samples[:, : cfg.hmc_chains // 2], samples[:, cfg.hmc_chains // 2:]

    def flat_predictive(theta):
        total = 0
        for chunk in theta.reshape(-1, P).split(4096):
            total = total + torch.softmax(D.mlp_forward_flat(chunk, grid, sizes), -1).sum(0)
        return total / theta.reshape(-1, P).shape[0]

    p_hmc = flat_predictive(samples)
    p_hmc_a, p_hmc_b = flat_predictive(chains_a), flat_predictive(chains_b)
    seconds["HMC"] = time.perf_counter() - t0

    # SGD plug-in (MAP of the same posterior).
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed + 1)
    sgd_model = D.mlp(sizes).to(device)
    train_map(sgd_model, x, y, x.shape[0], cfg.prior_precision, cfg.sgd_lr, cfg.sgd_iterations, cfg.batch_size,
              seeded_generator(cfg.seed + 1, device))
    with torch.no_grad():
        p_sgd = torch.softmax(sgd_model(grid), -1)
    seconds["SGD"] = time.perf_counter() - t0

    # SGLD teacher with three students, online (Algorithm 1).
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed + 2)
    g = seeded_generator(cfg.seed + 2, device)
    teacher = D.SGLDTeacher(D.mlp(sizes).to(device), x.shape[0], cfg.prior_precision, cfg.teacher_lr, generator=g)
    students = {
        name: adam_student(D.mlp(s).to(device), cfg.student_lr, cfg.student_prior_precision,
                           cfg.iterations - cfg.burn_in, cfg.student_final_lr_fraction)
        for name, s in TOY_STUDENTS.items()
    }
    distiller = D.Distiller(
        teacher, students, x, y, D.uniform_inputs([TOY2D_DOMAIN[0]] * 2, [TOY2D_DOMAIN[1]] * 2, device=device),
        batch_size=cfg.batch_size, student_batch_size=cfg.student_batch_size, burn_in=cfg.burn_in, thin=cfg.thin,
        ensemble_inputs={"grid": grid}, generator=g,
    )
    run_distiller(distiller, cfg.iterations, checkpointer("bdk-toy-classification", cfg, cfg.checkpoint_every),
                  "distilled SGLD (toy)")
    p_sgld = distiller.ensemble.result("grid")
    p_students = {name: s.predict(grid) for name, s in students.items()}
    seconds["SGLD + students"] = time.perf_counter() - t0

    preds = {"SGD": p_sgd, "SGLD": p_sgld, **{f"Distilled {n}": p for n, p in p_students.items()}}
    kl = {m: float(D.categorical_kl(p_hmc, p).mean()) for m, p in preds.items()}
    near = torch.cdist(grid, x).min(1).values < 1.0  # grid points within distance 1 of a training point
    kl_near = {m: float(D.categorical_kl(p_hmc, p)[near].mean()) for m, p in preds.items()}
    kl_far = {m: float(D.categorical_kl(p_hmc, p)[~near].mean()) for m, p in preds.items()}
    params = {"SGD": P, "SGLD": P * distiller.ensemble.count}
    params.update({f"Distilled {n}": num_params(s.model) for n, s in students.items()})
    return {
        "x": x.cpu(), "y": y.cpu(), "grid": grid.cpu(), "grid_size": cfg.grid_size, "domain": TOY2D_DOMAIN,
        "predictive": {"HMC": p_hmc[:, 1].cpu(), "SGD": p_sgd[:, 1].cpu(), "SGLD": p_sgld[:, 1].cpu(),
                       **{f"Distilled {n}": p[:, 1].cpu() for n, p in p_students.items()}},
        "kl": kl,
        "kl_hmc_halves": float(D.categorical_kl(p_hmc_a, p_hmc_b).mean()),
        "kl_near_data": kl_near,
        "kl_far_from_data": kl_far,
        "fraction_near_data": float(near.float().mean()),
        "kl_students_to_sgld": {n: float(D.categorical_kl(p_sgld, p).mean()) for n, p in p_students.items()},
        "alive_units": {n: alive_units(s.model, *TOY2D_DOMAIN) for n, s in students.items()},
        "num_params": params,
        "hmc_acceptance": acceptance,
        "hmc_num_samples": int(samples.shape[0] * samples.shape[1]),
        "sgld_num_samples": distiller.ensemble.count,
        "seconds": seconds,
        "total_seconds": sum(seconds.values()),
        "history": distiller.history,
    }


# --------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------


def table2(results: dict) -> str:
    """Table 2 of the paper beside ours (KL from the HMC predictive, averaged over the grid)."""
    paper = {r["model"]: r for r in paper_numbers()["korattikara2015bdk"]["toy_classification"]["table2_kl_to_hmc"]["rows"]}
    rows = []
    for name in ["SGD", "SGLD", "Distilled 2-10-2", "Distilled 2-100-2", "Distilled 2-10-10-2"]:
        p = paper.get(name, {})
        rows.append([name, p.get("num_params"), p.get("kl"), results["num_params"][name], f"{results['kl'][name]:.3f}"])
    rows.append(["HMC half vs half (noise floor)", None, None, None, f"{results['kl_hmc_halves']:.4f}"])
    return markdown_table(rows, ["model", "# params (paper)", "KL (paper)", "# params (ours)", "KL (ours)"],
                          formats={"KL (paper)": "g"})


def toy_students_table(results: dict) -> str:
    """Each student of a toy run: KL from HMC, KL from the SGLD ensemble it was distilled from, and
    its hidden units alive on the input square (Markdown)."""
    rows = []
    for name, kl_sgld in results["kl_students_to_sgld"].items():
        alive = results.get("alive_units", {}).get(name)
        widths = [int(w) for w in name.split("-")[1:-1]]
        alive_text = None if alive is None else " + ".join(f"{a} of {w}" for a, w in zip(alive, widths))
        rows.append([f"Distilled {name}", f"{results['kl'][f'Distilled {name}']:.4f}", f"{kl_sgld:.4f}", alive_text])
    rows.append(["SGLD ensemble (the teacher)", f"{results['kl']['SGLD']:.4f}", "0", None])
    return markdown_table(rows, ["predictive", "KL from HMC", "KL from the SGLD ensemble", "hidden units alive"])


def toy_classification_header(results: dict, paper: dict) -> str:
    """The line above Table 2 of the 2-D toy classification: how the run was made (its numbers are in the table)."""
    return toy_run_note(results, "the table sets our KL values beside the paper's Table 2 (§3.1).")


def toy_classification_tables(results: dict) -> str:
    """KL to HMC split into the grid points near the training data and the rest, as a Markdown table."""
    kl = results["kl"]
    near = f"KL near the data ({100 * results['fraction_near_data']:.0f}% of grid)"
    rows = [[m, f"{results['kl_near_data'][m]:.3f}", f"{results['kl_far_from_data'][m]:.3f}"] for m in kl]
    return markdown_table(rows, ["predictive", near, "KL elsewhere"])


# --------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------


def plot_class_maps(maps: Mapping[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, domain=TOY2D_DOMAIN,
                    kl: Mapping[str, float] | None = None, ncols: int = 2):
    """Maps of the probability of class 1 on the square grid of :func:`square_grid`, one panel per
    predictive in ``maps`` (each ``(n^2,)``), with the decision boundary (black) and the training
    points; a panel whose name is in ``kl`` gets its KL value in the title."""
    lo, hi = domain
    n = math.isqrt(next(iter(maps.values())).numel())
    rows = math.ceil(len(maps) / ncols)
    fig, axes = plt.subplots(rows, ncols, figsize=(7.0, 3.2 * rows + 0.4), sharex=True, sharey=True,
                             constrained_layout=True, squeeze=False)
    lin = torch.linspace(lo, hi, n).numpy()
    for ax, (name, p) in zip(axes.flat, maps.items()):
        p = torch.as_tensor(p).detach().cpu().reshape(n, n).numpy()
        im = ax.imshow(p, origin="lower", extent=(lo, hi, lo, hi), vmin=0, vmax=1, cmap="RdBu_r", aspect="auto")
        ax.contour(lin, lin, p, levels=[0.5], colors="k", linewidths=1)
        for cls, marker in ((0, "o"), (1, "s")):
            ax.scatter(x[y == cls, 0], x[y == cls, 1], marker=marker, c="white", edgecolors="k", s=30,
                       label=f"class {cls}")
        ax.set_title(name + (f" (KL {kl_label(kl[name])})" if kl and name in kl else ""))
        ax.grid(False)
    for ax in axes[-1]:
        ax.set_xlabel("$x_1$")
    for ax in axes[:, 0]:
        ax.set_ylabel("$x_2$")
    # the legend above the panels, off the maps (the figure's caption carries the title)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncol=2, frameon=False)
    fig.colorbar(im, ax=axes, orientation="horizontal", shrink=0.7, aspect=40,
                 label="$p(y = 1 \\mid x, \\mathcal{D})$")
    return fig


def plot_toy_classification(results: dict):
    """Figure 1 of the paper, ours: the predictive probability of class 1 on the grid for each method."""
    names = ["HMC", "SGD", "SGLD", "Distilled 2-10-2", "Distilled 2-100-2", "Distilled 2-10-10-2"]
    return plot_class_maps({name: results["predictive"][name] for name in names}, results["x"], results["y"],
                           results["domain"], kl=results["kl"])


register(Experiment("bdk-toy-classification", "book/bdk-toy.ipynb", "BDK §3.1: KL to HMC on the 2-D toy (Table 2)",
                    TOY_CLASSIFICATION_CONFIGS, toy_classification, summary=table2))
