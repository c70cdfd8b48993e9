"""The provenance of a run: the configuration, the code (git commit, digest of bdk's source), the
versions, the device and the time it took, as :func:`provenance` writes it beside every cached result
and into every record (:mod:`bdk.provenance`)."""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Mapping

import numpy
import torch

from ._runtime import __version__, get_device
from .config import config_dict, config_hash, json_default

__all__ = ["provenance", "git_state", "device_description", "source_digest", "utc_now"]

_ROOT = Path(__file__).resolve().parents[1]


def git_state(root: str | os.PathLike | None = None) -> dict:
    """``{"commit": sha or None, "dirty": bool or None}`` of the repository holding ``bdk``.

    ``dirty`` is True when tracked files differ from the commit (untracked files do not count).
    Both are ``None`` outside a git checkout (an installed wheel, a Colab copy without ``.git``)."""
    root = Path(root) if root is not None else _ROOT
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit or None, "dirty": bool(status.strip())}


@functools.lru_cache(maxsize=None)
def source_digest() -> str:
    """SHA-256 (16 hex digits) of the source of the ``bdk`` package: every ``.py`` file under it, by
    relative path and content.

    The results cache stores it beside each result and recomputes a result whose code has changed
    since (a configuration alone does not say which code computed a number). Read once per process:
    the code that runs is the code that was imported."""
    package = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_description(device=None) -> dict:
    """The device a run used, in words: type, model (CPU model or GPU name), cores and threads."""
    device = torch.device(device) if device is not None else get_device()
    out = {
        "type": device.type,
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    elif device.type == "mps":
        out["gpu"] = "Apple MPS"
    return out


def provenance(config: Any = None, *, profile: str | None = None, overrides: Mapping[str, Any] | None = None,
               wall_seconds: float | None = None, cpu_seconds: float | None = None, device=None,
               git: dict | None = None, started: str | None = None) -> dict:
    """Everything needed to trace a result to the run that made it.

    Args:
        config: the dataclass configuration exactly as run (overrides already applied).
        profile: the profile the configuration was taken from.
        overrides: the fields that were changed from that profile's configuration.
        wall_seconds, cpu_seconds: how long the computation took.
        device: the device it ran on (default ``bdk.get_device()``).
        git, started: :func:`git_state` and the UTC date taken when the run *started* (default: now),
            so that a commit made while a long run goes on is not credited with its numbers.
    """
    out = {
        "profile": profile,
        "overrides": dict(overrides or {}),
        "config": None if config is None else config_dict(config),
        "config_hash": None if config is None else config_hash(config),
        **(git if git is not None else git_state()),
        "bdk_source": source_digest(),
        "versions": {"bdk": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
                     "python": platform.python_version()},
        "device": device_description(device),
        "platform": platform.platform(),
        "date": started or utc_now(),
        "wall_seconds": wall_seconds,
        "cpu_seconds": cpu_seconds,
    }
    return json.loads(json.dumps(out, default=json_default))  # in order; an array by content, never a repr


def utc_now() -> str:
    """The current date and time in UTC, ISO 8601 to the second."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
