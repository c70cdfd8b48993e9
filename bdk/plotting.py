"""One visual language for every figure in the book (introduced in "Data and tools").

``use_style()`` sets fonts, sizes and the palette; ``COLORS`` gives every method the same colour in
every chapter; ``reliability_diagram`` draws a calibration plot from :func:`bdk.metrics.calibration_bins`.
"""

from __future__ import annotations

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from .metrics import calibration_bins

__all__ = ["COLORS", "use_style", "method_color", "reliability_diagram"]

# Colour-blind-safe (Okabe-Ito); one colour per method, the same in every chapter.
COLORS = {
    "exact": "#000000",
    "SGD": "#E69F00",
    "SGLD": "#0072B2",
    "pSGLD": "#56B4E9",
    "IVON": "#009E73",
    "AdamW": "#CC79A7",
    "Adam": "#CC79A7",
    "RMSprop": "#F0E442",
    "teacher": "#0072B2",
    "student": "#D55E00",
    "MALA": "#7F7F7F",
    "Euler-Maruyama": "#0072B2",
    "dropout": "#999933",
    "HMC": "#000000",
}


def method_color(name: str) -> str:
    """The colour of a method (``"SGLD"``, ``"student"`` ...); unknown names get a neutral grey."""
    return COLORS.get(name, "#555555")


def use_style() -> None:
    """Apply the book's style: seaborn's ``ticks`` theme with the book's palette, sizes and grid.

    Every chapter's first cell calls it (through :func:`bdk.setup_notebook`), so seaborn's plots
    (``sns.histplot``, ``sns.kdeplot``, ``sns.heatmap``) and plain matplotlib ones look alike.
    """
    palette = [COLORS[k] for k in ("SGLD", "SGD", "IVON", "student", "AdamW", "pSGLD", "RMSprop", "exact")]
    sns.set_theme(context="notebook", style="ticks", palette=palette, font_scale=0.95)
    mpl.rcParams.update(
        {
            "figure.figsize": (6.4, 4.0),
            "figure.dpi": 100,
            "savefig.dpi": 150,
            "savefig.bbox": "tight",
            "font.size": 11,
            "axes.titlesize": 12,
            "axes.labelsize": 11,
            "legend.fontsize": 10,
            "legend.frameon": False,
            "xtick.labelsize": 10,
            "ytick.labelsize": 10,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "grid.alpha": 0.25,
            "lines.linewidth": 1.8,
            "image.cmap": "viridis",
            "axes.prop_cycle": mpl.cycler(color=palette),
        }
    )


def reliability_diagram(confidence, correct, num_bins: int = 15, ax=None, label: str | None = None, color=None):
    """Plot accuracy against confidence in equal-width bins, with the diagonal of perfect calibration.

    Args:
        confidence: predicted probability of the predicted class, shape ``(n,)``.
        correct: whether each prediction was right, shape ``(n,)``.
        num_bins: number of equal-width bins on ``[0, 1]``.
        ax: axes to draw on (a new figure if ``None``).
        label: legend label (e.g. the method's name; also picks its colour).
        color: override the colour.

    Returns:
        The axes.
    """
    bins = calibration_bins(confidence, correct, num_bins=num_bins)
    if ax is None:
        _, ax = plt.subplots(figsize=(4.2, 4.2))
    color = color or (method_color(label) if label else None)
    mask = bins["count"] > 0
    ax.plot([0, 1], [0, 1], ls="--", color="0.5", lw=1)
    ax.plot(bins["confidence"][mask], bins["accuracy"][mask], marker="o", ms=4, label=label, color=color)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (predicted probability)")
    ax.set_ylabel("accuracy")
    ax.set_aspect("equal")
    if label:
        ax.legend(loc="upper left")
    return ax
