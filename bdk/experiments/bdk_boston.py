"""Experiments of chapter 6's Boston housing section (§3.4 of :cite:t:`korattikara2015bdk`, Table 5).

:func:`boston` runs SGD, SGLD (with a Gibbs step for the noise precision) and the distilled student
over random 90/10 splits, all splits at once (``bdk.distill.StackedDistiller``, built by
:func:`boston_stacked_distiller`) or one after another (``bdk.distill.Distiller``);
:func:`table5` sets the numbers beside the paper's. Registered as ``bdk-boston``
(``python -m bdk reproduce bdk-boston``).
"""

from __future__ import annotations

import math
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.lines import Line2D

from .. import distill as D
from .. import metrics
from .._runtime import get_device, one_cpu_thread, profile, seeded_generator
from ..cache import progress
from ..data import load_boston
from ..plotting import method_color
from .distill_common import checkpointer, paper_numbers, run_distiller
from .distill_configs import BOSTON_CONFIGS, BostonConfig
from .registry import Experiment, register
from .tables import markdown_table, mean_and_se, plus_minus

__all__ = [
    "BostonConfig",
    "BOSTON_CONFIGS",
    "boston",
    "boston_stacked_distiller",
    "table5",
    "paired_difference",
    "boston_header",
    "boston_record_summary",
    "plot_boston_splits",
    "paper_numbers",
]


_METHODS = ("SGD", "SGLD", "SGLD (moment-matched)", "SGLD distilled")


def _sgd_loss(nll_scale, log_tau, squares, weights_squared, cfg, N):
    """The SGD baseline's loss U / N: the minibatch negative log-likelihood (scaled by ``N / M``) of
    ``N(f, 1/tau)`` with ``tau = exp(log_tau)``, the weights' Gaussian prior and the Gamma prior on tau."""
    a, b = cfg.noise_prior
    tau = log_tau.exp()
    nll = -nll_scale * (0.5 * log_tau * cfg.batch_size - 0.5 * tau * squares)
    prior = 0.5 * cfg.prior_precision * weights_squared - ((a - 1) * log_tau - b * tau)
    return (nll + prior) / N


def _split_scores(ll_sgd, ens, s_mean, s_var, mean_sgd, y_test, y_std, log_scale, noise_precision) -> dict:
    """One split's row: the test log-likelihoods (original units) and RMSEs of SGD, the SGLD ensemble
    (its mixture and its moment-matched Gaussian) and the student, and the teacher's noise sd."""
    return {
        "SGD": ll_sgd,
        "SGLD": float(ens["log_lik"].double().mean()) - log_scale,
        "SGLD (moment-matched)": metrics.gaussian_log_likelihood(ens["mean"], ens["var"], y_test) - log_scale,
        "SGLD distilled": metrics.gaussian_log_likelihood(s_mean, s_var, y_test) - log_scale,
        "noise_sd": y_std / math.sqrt(noise_precision),
        "rmse": {m: y_std * float((p - y_test).pow(2).mean().sqrt())
                 for m, p in (("SGD", mean_sgd), ("SGLD", ens["mean"]), ("SGLD distilled", s_mean))},
    }


def _boston_split(cfg: BostonConfig, k: int, device) -> dict:
    """Split ``k`` alone: SGD, then distilled SGLD through ``bdk.distill.Distiller`` (the serial reference)."""
    data = load_boston(split=k)
    x, y = data.x_train.to(device), data.y_train.to(device)
    x_test, y_test = data.x_test.to(device), data.y_test.to(device)
    N, d = x.shape
    log_scale = math.log(data.y_std)
    sizes = (d, cfg.hidden, 1)
    seed = cfg.seed + 100 * k

    # SGD: MAP of the weights and of the noise precision (plug-in predictive N(f, 1/tau)).
    torch.manual_seed(seed)
    model = D.mlp(sizes).to(device)
    log_tau = torch.zeros((), device=device, requires_grad=True)
    opt = torch.optim.SGD([*model.parameters(), log_tau], lr=cfg.sgd_lr, momentum=0.9)
    g = seeded_generator(seed, device)
    for t in range(cfg.sgd_iterations):
        idx = torch.randint(N, (cfg.batch_size,), device=device, generator=g)
        opt.zero_grad(set_to_none=True)
        r = model(x[idx]).squeeze(-1) - y[idx]
        loss = _sgd_loss(N / cfg.batch_size, log_tau, r.pow(2).sum(), sum(p.pow(2).sum() for p in model.parameters()),
                         cfg, N)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"Boston SGD split {k}, step {t + 1}: loss {float(loss)}; lower sgd_lr.")
        loss.backward()
        opt.step()
    with torch.no_grad():
        mean = model(x_test).squeeze(-1)
        var = torch.full_like(mean, float(1 / log_tau.exp()))
        ll_sgd = metrics.gaussian_log_likelihood(mean, var, y_test) - log_scale

    # Distilled SGLD (teacher SGLD + Gibbs noise precision; student same architecture with 2 outputs).
    torch.manual_seed(seed + 1)
    g = seeded_generator(seed + 1, device)
    teacher = D.SGLDTeacher(
        D.mlp(sizes).to(device), N, cfg.prior_precision, cfg.teacher_lr, likelihood="regression",
        noise_precision=1.0, noise_prior=cfg.noise_prior, x_full=x, y_full=y,
        lr_lambda=lambda t: 0.5 ** (t // cfg.teacher_halve_every), generator=g, noise_every=cfg.noise_every,
    )
    smodel = D.mlp((d, cfg.hidden, 2)).to(device)
    student = D.Student.sgd(smodel, cfg.student_lr, cfg.student_prior_precision, momentum=0.0,
                            step_every=cfg.student_decay_every, gamma=cfg.student_decay)
    distiller = D.Distiller(teacher, student, x, y, D.gaussian_noise_inputs(x, cfg.input_noise_std), task="regression",
                            batch_size=cfg.batch_size, student_batch_size=cfg.student_batch_size, burn_in=cfg.burn_in,
                            thin=cfg.thin, ensemble_inputs={"test": x_test}, ensemble_targets={"test": y_test}, generator=g)
    run_distiller(distiller, cfg.iterations, checkpointer("bdk-boston", cfg, cfg.checkpoint_every, f"-split{k}"),
                  f"Boston split {k}")
    s_mean, s_var = student.predict(x_test, "regression")
    return _split_scores(ll_sgd, distiller.ensemble.result("test"), s_mean, s_var, mean, y_test, data.y_std, log_scale,
                         teacher.noise_precision)


def boston_stacked_distiller(cfg: BostonConfig, x, y, x_test, y_test, generator) -> D.StackedDistiller:
    """The distilled SGLD of :class:`BostonConfig` for the splits stacked in ``x (C, N, d)``, ``y (C, N)``
    (fresh initial weights from the global generator; the test sets feed the ensemble averages)."""
    C, _, d = x.shape
    sizes = (d, cfg.hidden, 1)
    return D.StackedDistiller(
        x, y, sizes, (d, cfg.hidden, 2), D.mlp_init_flat(sizes, C, x.device), D.mlp_init_flat((d, cfg.hidden, 2), C, x.device),
        D.stacked_noise_inputs(x, cfg.input_noise_std), task="regression", prior_precision=cfg.prior_precision,
        teacher_lr=cfg.teacher_lr, teacher_lr_lambda=lambda t: 0.5 ** (t // cfg.teacher_halve_every),
        noise_precision=1.0, noise_prior=cfg.noise_prior, noise_every=cfg.noise_every, student_lr=cfg.student_lr,
        student_prior_precision=cfg.student_prior_precision,
        student_lr_lambda=lambda j: cfg.student_decay ** (j // cfg.student_decay_every), batch_size=cfg.batch_size,
        student_batch_size=cfg.student_batch_size, burn_in=cfg.burn_in, thin=cfg.thin,
        ensemble_inputs={"test": x_test}, ensemble_targets={"test": y_test}, generator=generator)


def _boston_stacked(cfg: BostonConfig, device) -> list[dict]:
    """All splits at once: SGD and distilled SGLD of every split as one stacked computation
    (``bdk.distill.StackedDistiller``), the same algorithm as :func:`_boston_split` per split."""
    splits = [load_boston(split=k) for k in range(cfg.num_splits)]
    if len({s.x_train.shape for s in splits}) != 1:
        raise ValueError("the stacked Boston run needs splits of equal size; run with --set batched=False.")
    x = torch.stack([s.x_train for s in splits]).to(device)
    y = torch.stack([s.y_train for s in splits]).to(device)
    x_test = torch.stack([s.x_test for s in splits]).to(device)
    y_test = torch.stack([s.y_test for s in splits]).to(device)
    log_scale = torch.tensor([math.log(s.y_std) for s in splits], dtype=torch.float64)
    C, N, d = x.shape
    sizes = (d, cfg.hidden, 1)

    # SGD: MAP of the weights and of the noise precision, all splits at once (SGD is elementwise,
    # so one optimizer over the stacked rows is the same as one per split).
    torch.manual_seed(cfg.seed)
    theta = D.mlp_init_flat(sizes, C, device).requires_grad_(True)
    log_tau = torch.zeros(C, device=device, requires_grad=True)
    opt = torch.optim.SGD([theta, log_tau], lr=cfg.sgd_lr, momentum=0.9)
    g = seeded_generator(cfg.seed, device)
    for t in progress(range(cfg.sgd_iterations), desc="Boston SGD (all splits)"):
        idx = torch.randint(N, (C, cfg.batch_size), device=device, generator=g)
        opt.zero_grad(set_to_none=True)
        xb, yb = x.gather(1, idx.unsqueeze(-1).expand(C, cfg.batch_size, d)), y.gather(1, idx)
        r = D.mlp_forward_flat(theta, xb, sizes).squeeze(-1) - yb
        loss = _sgd_loss(N / cfg.batch_size, log_tau, r.pow(2).sum(1), theta.pow(2).sum(1), cfg, N)
        if not bool(torch.isfinite(loss).all()):
            k = int((~torch.isfinite(loss)).nonzero()[0])
            raise FloatingPointError(f"Boston SGD split {k}, step {t + 1}: loss {float(loss[k])}; lower sgd_lr.")
        loss.sum().backward()
        opt.step()
    with torch.no_grad():
        mean = D.mlp_forward_flat(theta, x_test, sizes).squeeze(-1)
        var = (1 / log_tau.exp()).unsqueeze(1).expand_as(mean)
        sgd = [metrics.gaussian_log_likelihood(mean[k], var[k], y_test[k]) - float(log_scale[k]) for k in range(C)]

    # Distilled SGLD, all splits at once.
    torch.manual_seed(cfg.seed + 1)
    run = boston_stacked_distiller(cfg, x, y, x_test, y_test, seeded_generator(cfg.seed + 1, device))
    run_distiller(run, cfg.iterations, checkpointer("bdk-boston", cfg, cfg.checkpoint_every, "-stacked"),
                  f"Boston, {C} splits stacked")
    ens = run.ensemble("test")
    s_mean, s_var = run.student_predict(x_test)
    return [_split_scores(sgd[k], {key: v[k] for key, v in ens.items()}, s_mean[k], s_var[k], mean[k], y_test[k],
                          splits[k].y_std, float(log_scale[k]), float(run.tau[k]))
            for k in range(C)]


@one_cpu_thread()
def boston(cfg: BostonConfig) -> dict:
    """Table 5: average test log-likelihood (original units) of SGD, SGLD and the distilled student
    over ``num_splits`` random 90/10 splits (mean ± standard error).

    With ``batched=True`` (the default) all splits run as one stacked computation
    (:func:`_boston_stacked`); ``batched=False`` runs them one after another (:func:`_boston_split`,
    one ``bdk.distill.Distiller`` per split), the reference the stacked path is tested against."""
    if cfg.iterations <= cfg.burn_in:
        raise ValueError(f"iterations ({cfg.iterations}) must exceed burn_in ({cfg.burn_in}): the ensemble and the "
                         "students start after the burn-in.")
    device = get_device()
    t0 = time.perf_counter()
    if cfg.batched:
        splits = _boston_stacked(cfg, device)
    else:
        splits = [_boston_split(cfg, k, device) for k in progress(range(cfg.num_splits), desc="Boston splits")]
    return {
        "splits": splits,
        "summary": {m: mean_and_se([s[m] for s in splits]) for m in _METHODS},
        "rmse": {m: mean_and_se([s["rmse"][m] for s in splits]) for m in ("SGD", "SGLD", "SGLD distilled")},
        "num_splits": cfg.num_splits,
        "batched": cfg.batched,
        "total_seconds": time.perf_counter() - t0,
    }


# --------------------------------------------------------------------------------------------------
# Tables and sentences
# --------------------------------------------------------------------------------------------------


def paired_difference(values_a, values_b) -> tuple[float, float | None]:
    """Mean and standard error of the per-split differences ``a - b``."""
    return mean_and_se([a - b for a, b in zip(values_a, values_b)])


def table5(results: dict) -> str:
    """Table 5 of the paper (with PBP's and VI's numbers as it quotes them) beside ours."""
    paper = {r["method"]: r for r in paper_numbers()["korattikara2015bdk"]["boston"]["table5_test_log_likelihood"]["rows"]}
    rows = []
    for m in ("PBP (as reported in [HLA15])", "VI (as reported in [HLA15])"):
        rows.append([m, plus_minus(paper[m]["mean"], paper[m]["se"]), None])
    for m, ours in (("SGD", "SGD"), ("SGLD", "SGLD"), (None, "SGLD (moment-matched)"), ("SGLD distilled", "SGLD distilled")):
        mean, se = results["summary"][ours]
        rows.append([ours, None if m is None else plus_minus(paper[m]["mean"], paper[m]["se"]), plus_minus(mean, se)])
    n = results["num_splits"]
    return markdown_table(rows, ["method", "avg. test log-lik. (paper, 20 splits)",
                                 f"avg. test log-lik. (ours, {n} split{'s' if n > 1 else ''})"])


def boston_header(results: dict, paper: dict, cfg=None) -> str:
    """The line above Table 5 of the Boston section: how the run was made (its numbers are in the table;
    no timing). ``cfg`` (a :class:`BostonConfig`) adds the run's length and teacher step."""
    n = results["num_splits"]
    run = ""
    if cfg is not None:
        mantissa, exponent = f"{cfg.teacher_lr:e}".split("e")
        step = (f"10^{{{int(exponent)}}}" if float(mantissa) == 1 else f"{float(mantissa):g} \\times 10^{{{int(exponent)}}}")
        run = f", {cfg.iterations:,} iterations with {cfg.burn_in:,} of burn-in and a teacher step $\\eta_0 = {step}$"
    return (f"> **How this section was run.** Profile `{profile()}`: {n} random 90/10 split{'s' if n > 1 else ''}"
            f"{run}. The table sets our numbers beside the paper's Table 5 (§3.4).")


def boston_record_summary(results: dict, paper: dict) -> str:
    """What a Boston run shows, in sentences computed from its per-split numbers (Markdown): SGLD
    against SGD and the student against its teacher, paired over splits, beside the paper's gaps."""
    t5 = {r["method"]: r["mean"] for r in paper["boston"]["table5_test_log_likelihood"]["rows"]}
    splits = results["splits"]
    col = {m: [s[m] for s in splits] for m in _METHODS}
    n = len(splits)
    wins = sum(a > b for a, b in zip(col["SGLD"], col["SGD"]))
    d_sgd, se_sgd = paired_difference(col["SGLD"], col["SGD"])
    d_st, se_st = paired_difference(col["SGLD distilled"], col["SGLD"])
    d_mm, se_mm = paired_difference(col["SGLD distilled"], col["SGLD (moment-matched)"])
    sgld = mean_and_se(col["SGLD"])[0]
    worst = min(range(n), key=lambda k: col["SGLD"][k])
    rest = mean_and_se([v for k, v in enumerate(col["SGLD"]) if k != worst])[0]
    lines = [
        f"* **SGLD against SGD.** The SGLD ensemble has the higher test log-likelihood on {wins} of the "
        f"{n} splits; paired over splits it is higher by {d_sgd:.3f} ± {se_sgd:.3f} (the paper's means differ "
        f"by {t5['SGLD'] - t5['SGD']:.3f}).",
        f"* **The student against its teacher.** The distilled student is {-d_st:.3f} ± {se_st:.3f} below the "
        f"SGLD ensemble (the paper: {t5['SGLD'] - t5['SGLD distilled']:.3f}) and {-d_mm:.3f} ± {se_mm:.3f} below "
        "the moment-matched Gaussian it is trained to become.",
        f"* **The teacher against the paper's.** Our SGLD mean is {sgld - t5['SGLD']:+.3f} from the paper's. "
        f"One split ({worst}) scores {col['SGLD'][worst]:.2f}; without it the mean is {rest:.3f}. The student's "
        "distance from the paper's number is its teacher's distance plus its own gap to the teacher.",
    ]
    if "rmse" in results:
        pbp = {r["method"]: r for r in paper_numbers()["hernandez2015pbp"]["boston_test_rmse"]["rows"]}
        rmse = results["rmse"]
        lines.append("* **Test RMSE** (thousands of dollars; the part of the log-likelihood that the predictive mean "
                     "decides): " + ", ".join(f"{m} {rmse[m][0]:.2f} ± {rmse[m][1]:.2f}" for m in rmse)
                     + f"; PBP reports {pbp['PBP']['mean']:.2f} ± {pbp['PBP']['se']:.2f} and backpropagation "
                     f"{pbp['BP']['mean']:.2f} ± {pbp['BP']['se']:.2f} on its own splits {{cite:p}}`hernandez2015pbp`.")
    return "\n".join(lines)


def plot_boston_splits(results: dict, paper: dict, title: str | None = None):
    """Table 5 as a figure: test log-likelihood per split, mean ± s.e. over splits, and the paper's means.

    The methods are named on the x axis; a key below the axes says what the dots, squares and dotted
    lines are. ``title`` (optional) goes above; on a book page the figure's caption carries it."""
    methods = ["SGD", "SGLD", "SGLD distilled"]
    colors = [method_color(m) for m in ("SGD", "SGLD", "student")]
    values = np.array([[split[m] for m in methods] for split in results["splits"]])
    n = len(values)
    fig, ax = plt.subplots(figsize=(7.0, 3.9))
    for j, (m, c) in enumerate(zip(methods, colors)):
        ax.scatter(np.full(n, j) + np.linspace(-0.1, 0.1, n), values[:, j], color=c)
        se = values[:, j].std(ddof=1) / np.sqrt(n) if n > 1 else 0.0
        ax.errorbar(j + 0.25, values[:, j].mean(), yerr=se, fmt="s", color=c, capsize=4)
    rows = {r["method"]: r for r in paper["boston"]["table5_test_log_likelihood"]["rows"]}
    for m, c in zip(methods, colors):
        if m in rows:
            ax.axhline(rows[m]["mean"], color=c, ls=":", lw=1)
    ax.set_xticks(range(len(methods)), methods)
    ax.set_ylabel("average test log-likelihood")
    if title:
        ax.set_title(title)
    key = [Line2D([], [], ls="", marker="o", color="0.4", label="one split"),
           Line2D([], [], ls="", marker="s", color="0.4", label="mean ± s.e. over splits"),
           Line2D([], [], ls=":", color="0.4", label="the paper's mean")]
    ax.legend(handles=key, fontsize=9, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.1), frameon=False)
    fig.tight_layout()
    return fig


register(Experiment("bdk-boston", "book/bdk-boston.ipynb", "BDK §3.4: Boston housing log-likelihood (Table 5)",
                    BOSTON_CONFIGS, boston, summary=table5))
