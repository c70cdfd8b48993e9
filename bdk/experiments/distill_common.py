"""What the experiments of chapter 6, Bayesian dark knowledge :cite:p:`korattikara2015bdk`, share.

The paper's numbers (``data/paper_numbers.json``), the checkpointer and run helper of a long
distillation, the SGD baseline (the MAP of the teacher's posterior), the Adam students of the toy
problems and their alive hidden units, and the MNIST pieces that the MNIST and teachers sections
share (data, student, metrics, entropy histograms). Each section's experiments live in their own
module: :mod:`bdk.experiments.bdk_toy`, :mod:`~bdk.experiments.bdk_toy_regression`,
:mod:`~bdk.experiments.bdk_mnist`, :mod:`~bdk.experiments.bdk_boston` and
:mod:`~bdk.experiments.bdk_teachers`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Mapping

import matplotlib.pyplot as plt
import seaborn as sns
import torch
from torch import nn

from .. import distill as D
from .. import metrics
from .._runtime import profile
from ..cache import Checkpointer, cache_dir, progress
from ..config import config_hash
from ..data import data_dir, load_fashion_mnist, load_mnist
from ..plotting import method_color
from ..samplers import neg_log_posterior

__all__ = [
    "paper_numbers",
    "checkpointer",
    "run_distiller",
    "num_params",
    "adam_student",
    "train_map",
    "alive_units",
    "kl_label",
    "toy_run_note",
    "classification_metrics",
    "entropy",
    "mnist_data",
    "mnist_student",
    "mnist_distiller",
    "plot_entropy_histograms",
]


def paper_numbers() -> dict:
    """The reported numbers of ``data/paper_numbers.json`` (``BDK_DATA_DIR``, else the repository's ``data/``)."""
    candidates = [data_dir() / "paper_numbers.json", Path(__file__).resolve().parents[2] / "data" / "paper_numbers.json"]
    for path in candidates:
        if path.is_file():
            return json.loads(path.read_text())
    raise FileNotFoundError(
        "data/paper_numbers.json was not found (looked in " + ", ".join(map(str, candidates)) + "); "
        "run from a checkout of the book's repository or set BDK_DATA_DIR to its data/ folder."
    )


def checkpointer(name: str, cfg, every: int, part: str = "") -> Checkpointer | None:
    """A ``bdk.Checkpointer`` for one long loop of an experiment (``None`` when ``every`` is 0).

    The file is keyed by the configuration without its ``checkpoint_every`` (how often a run saves does
    not change its numbers), so a rerun of the same configuration resumes where an interrupted one
    stopped, whatever frequency either used; the experiment clears it once the loop has finished."""
    if not every:
        return None
    key = config_hash(dataclasses.replace(cfg, checkpoint_every=0))
    return Checkpointer(cache_dir() / f"{name}-{key}{part}.ckpt", every=every)


def run_distiller(distiller, num_iterations: int, ckpt: Checkpointer | None, desc: str):
    """Run a ``Distiller`` or ``StackedDistiller`` to ``num_iterations``, resuming from and then clearing ``ckpt``."""
    distiller.run(num_iterations, checkpointer=ckpt, desc=desc)
    if ckpt is not None:
        ckpt.clear()
    return distiller


def num_params(model: nn.Module) -> int:
    """The number of weights and biases of ``model``."""
    return sum(p.numel() for p in model.parameters())


def adam_student(model: nn.Module, lr: float, prior_precision: float, num_steps: int, final_fraction: float) -> D.Student:
    """A student trained by Adam (weight decay = its prior precision), its rate decayed linearly from
    ``lr`` to ``final_fraction * lr`` over ``num_steps`` steps (the paper uses SGD; Adam reached a
    lower KL in the few thousand steps of the quick profile)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=prior_precision)
    steps = max(1, num_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: max(final_fraction, 1.0 - t / steps))
    return D.Student(model, opt, sched)


def train_map(model, x, y, num_data, prior_precision, lr, iterations, batch_size, generator, likelihood="classification",
              noise_precision=None, momentum=0.9, desc="SGD"):
    """SGD with momentum on the minibatch estimate of U / N (the MAP of the same posterior)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    n = x.shape[0]
    for t in progress(range(iterations), desc=desc):
        idx = torch.randint(n, (batch_size,), device=x.device, generator=generator)
        opt.zero_grad(set_to_none=True)
        loss = neg_log_posterior(model, x[idx], y[idx], num_data, prior_precision, likelihood, noise_precision) / num_data
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{desc} step {t + 1}: the loss is {float(loss)}; lower the learning rate.")
        loss.backward()
        opt.step()
    return model


def alive_units(model: nn.Sequential, low, high, grid_size: int = 101) -> list[int]:
    """Hidden ReLU units of an MLP that are positive somewhere on the box ``[low, high]^d`` (per hidden
    layer), checked on a ``grid_size``-point grid per dimension (the first layer, affine in the
    input, is exact at the corners too). A unit negative on the whole box is dead for every student
    input and gets no gradient again."""
    d = model[0].in_features
    lin = torch.linspace(low, high, grid_size if d <= 2 else 3)
    pts = torch.stack(torch.meshgrid(*[lin] * d, indexing="ij"), -1).reshape(-1, d).to(next(model.parameters()).device)
    counts, h = [], pts
    with torch.no_grad():
        for layer in model[:-1]:
            h = layer(h)
            if isinstance(layer, nn.Linear):
                counts.append(int((h.max(0).values > 0).sum()))
    return counts


def kl_label(value: float) -> str:
    """A KL value for a panel title: three decimals, or two significant digits below 0.001 (not "0.000")."""
    return f"{value:.3f}" if value >= 1e-3 else f"{value:.1e}"


def toy_run_note(results: dict, what: str) -> str:
    """One quoted line above a toy section's table: the profile and the sizes of the reference and the ensemble."""
    return (f"> **How this section was run.** Profile `{profile()}`: an HMC reference of "
            f"{results['hmc_num_samples']:,} samples (acceptance {results['hmc_acceptance']:.2f}) and an SGLD "
            f"ensemble of {results['sgld_num_samples']:,} thinned samples; {what}")


# --------------------------------------------------------------------------------------------------
# MNIST, shared by the MNIST section and the teachers section
# --------------------------------------------------------------------------------------------------


def classification_metrics(probs: torch.Tensor, y: torch.Tensor) -> dict:
    """Test error (%) and log-likelihood per example of predictive probabilities ``probs``."""
    return {"error": 100.0 * (1.0 - metrics.accuracy(probs, y)), "log_lik": -metrics.nll(probs, y)}


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Predictive entropy per input (nats), on the CPU."""
    return metrics.predictive_entropy(probs).cpu()


def mnist_data(source: str, num_test: int, num_ood: int, seed: int, device):
    """MNIST (``bdk.data.load_mnist``) and ``num_ood`` Fashion-MNIST test images on ``device``:
    ``(data, x, y, x_test, y_test, ood)``."""
    data = load_mnist(source=source, num_test=num_test, seed=seed)
    ood = load_fashion_mnist(num_test=num_ood, seed=seed).x_test.to(device)
    return (data, data.x_train.to(device), data.y_train.to(device), data.x_test.to(device), data.y_test.to(device), ood)


def mnist_student(sizes, lr: float, prior_precision: float, device) -> D.Student:
    """The MNIST student: an MLP of widths ``sizes`` (fresh weights from the global generator) trained by
    Adam with weight decay ``prior_precision``."""
    model = D.mlp(sizes).to(device)
    return D.Student(model, torch.optim.Adam(model.parameters(), lr=lr, weight_decay=prior_precision))


def mnist_distiller(teacher, student, x, y, cfg, ensemble_inputs: Mapping[str, torch.Tensor], generator,
                    **kwargs) -> D.Distiller:
    """Algorithm 1 on MNIST as the MNIST and teachers sections run it: the student learns on training
    digits plus Gaussian noise of ``cfg.input_noise_std``, in minibatches of ``cfg.batch_size``,
    after ``cfg.burn_in`` iterations; the ensemble averages every ``cfg.thin``-th teacher sample."""
    return D.Distiller(teacher, student, x, y, D.gaussian_noise_inputs(x, cfg.input_noise_std),
                       batch_size=cfg.batch_size, burn_in=cfg.burn_in, thin=cfg.thin,
                       ensemble_inputs=ensemble_inputs, generator=generator, **kwargs)


def plot_entropy_histograms(entropy: Mapping[str, Mapping[str, torch.Tensor]], title: str | None = None):
    """Histograms of predictive entropy per method (``sns.histplot``), one panel per input set (e.g.
    MNIST vs Fashion-MNIST).

    Two panels sit side by side; three or more are stacked, so that every panel stays readable at the
    width of the book's text column. ``title`` (optional) goes above the panels; on a book page the
    figure's caption carries it instead.
    """
    color = {"SGD": method_color("SGD"), "SGLD": method_color("SGLD"), "Distilled SGLD": method_color("student"),
             "teacher": method_color("teacher"), "student": method_color("student")}
    n = len(entropy)
    teacher_kinds = {"dropout": method_color("dropout"), "IVON": method_color("IVON"), "SGLD": method_color("SGLD")}
    rows, cols = (1, n) if n <= 2 else (n, 1)
    size = (7.2, 3.8) if rows == 1 else (7.0, 2.4 * rows + 0.6)
    fig, axes = plt.subplots(rows, cols, figsize=size, sharex=True, constrained_layout=True, squeeze=False)
    axes = axes.ravel()
    bins = torch.linspace(0, math.log(10), 31).numpy()
    for ax, (panel, methods) in zip(axes, entropy.items()):
        # a panel named after a teacher ("IVON: teacher vs student") draws the teacher in that method's colour
        kind = next((c for k, c in teacher_kinds.items() if panel.startswith(k)), method_color("teacher"))
        for name, values in methods.items():
            c = kind if name == "teacher" else color.get(name, method_color(name))
            sns.histplot(x=torch.as_tensor(values).numpy(), bins=bins, element="step", fill=False, lw=2, color=c,
                         ax=ax, label=f"{name} (mean {float(torch.as_tensor(values).mean()):.2f})")
        ax.set_title(panel)
        ax.set_ylabel("number of images")
        ax.legend(fontsize=9)
    for ax in axes[-cols:]:
        ax.set_xlabel("predictive entropy (nats)")
    if title:
        fig.suptitle(title)
    return fig
