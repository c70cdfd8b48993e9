"""bdk: Langevin dynamics, SGLD, variational learning and Bayesian dark knowledge in PyTorch.

The library behind the book *From Langevin dynamics to Bayesian dark knowledge*. Submodules are
imported on first use: ``bdk.langevin``, ``bdk.sde``, ``bdk.samplers``, ``bdk.blr``, ``bdk.optim``,
``bdk.distill``, ``bdk.data``, ``bdk.metrics``, ``bdk.plotting``, ``bdk.experiments``.
"""

from __future__ import annotations

import importlib

from ._runtime import PROFILES, __version__, get_device, profile, seed_everything
from .cache import Checkpointer, cache_dir, load_or_run, progress
from .notebook import setup_notebook, show_source

__all__ = [
    "PROFILES",
    "get_device",
    "profile",
    "seed_everything",
    "Checkpointer",
    "cache_dir",
    "load_or_run",
    "progress",
    "setup_notebook",
    "show_source",
    "__version__",
]

_SUBMODULES = {
    "blr",
    "cache",
    "config",
    "data",
    "distill",
    "experiments",
    "langevin",
    "metrics",
    "optim",
    "plotting",
    "samplers",
    "sde",
}


def __getattr__(name: str):
    if name in _SUBMODULES:
        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module 'bdk' has no attribute {name!r}")
