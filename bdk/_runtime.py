"""Device, seeding and profile helpers shared by every chapter (introduced in "Data and tools")."""

from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch

__version__ = "0.1.0"  # the package's version (pyproject.toml says the same)

__all__ = ["get_device", "check_device", "verbose", "seed_everything", "seeded_generator", "profile", "one_cpu_thread",
           "PROFILES", "__version__"]

PROFILES = ("quick", "paper")


def get_device() -> torch.device:
    """Return the device that computations should use.

    The order is CUDA, then Apple MPS, then CPU. The environment variable ``BDK_DEVICE``
    (for example ``cpu``, ``cuda``, ``cuda:1`` or ``mps``) overrides the choice.

    Returns:
        The selected ``torch.device``.

    Raises:
        RuntimeError: if ``BDK_DEVICE`` names a device type that this machine does not have.
        ValueError: if ``BDK_DEVICE`` is not a valid device string.
    """
    requested = os.environ.get("BDK_DEVICE", "").strip()
    if requested:
        return check_device(requested, "BDK_DEVICE")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def check_device(requested: str, origin: str = "BDK_DEVICE") -> torch.device:
    """The device that a user asked for, checked to exist on this machine.

    Args:
        requested: a device string such as ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"mps"``.
        origin: where the request came from, named in the messages (``"BDK_DEVICE"``, ``"--device"``).

    Raises:
        RuntimeError: if this machine does not have that device.
        ValueError: if ``requested`` is not a device string.
    """
    said = f"{origin}={requested!r}" if origin.isupper() else f"{origin} {requested}"
    instead = f"unset {origin}" if origin.isupper() else f"leave out {origin}"
    try:
        device = torch.device(requested)
    except RuntimeError as err:
        raise ValueError(f"{said} is not a device string; use e.g. 'cpu', 'cuda', 'cuda:0' or 'mps'.") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"{said} asks for CUDA, but PyTorch sees no CUDA device here; {instead} "
                               f"(or use cpu) to run on the CPU.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RuntimeError(f"{said} asks for CUDA device {device.index}, "
                               f"but only {torch.cuda.device_count()} CUDA device(s) exist.")
    if device.type == "mps" and not (
        getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    ):
        raise RuntimeError(f"{said} asks for Apple MPS, which is not available here; {instead} to pick the best "
                           "available device.")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{said}: bdk runs on 'cpu', 'cuda' or 'mps', not {device.type!r}.")
    return device


def verbose() -> bool:
    """Whether bdk prints its progress messages (configurations, cache hits, timings): ``BDK_VERBOSE``.

    ``1`` (the default, what the command line uses) prints them; ``0`` keeps them off the page
    (:func:`bdk.setup_notebook` sets it in the book, where each result is shown with its one-line
    provenance instead). Warnings, errors and what a run changes (a resumed checkpoint, a result that
    could not be saved, a data subset) are printed either way.

    Raises:
        ValueError: if ``BDK_VERBOSE`` is set to anything but ``0`` or ``1``.
    """
    value = os.environ.get("BDK_VERBOSE", "1").strip() or "1"
    if value not in ("0", "1"):
        raise ValueError(f"BDK_VERBOSE={value!r}: set it to 1 (print progress messages) or 0 (do not).")
    return value == "1"


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's (CPU and every CUDA device) global generators.

    Args:
        seed: a non-negative integer below ``2**64`` (the range of PyTorch's generator).

    Raises:
        ValueError: if ``seed`` is not a non-negative integer.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**64:
        raise ValueError(f"seed must be a non-negative integer below 2**64, got {seed!r}.")
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def seeded_generator(seed: int, device="cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed`` (the one helper the experiments use)."""
    return torch.Generator(device=device).manual_seed(int(seed))


def profile() -> str:
    """Return the run profile, ``"quick"`` or ``"paper"``.

    Read from the environment variable ``BDK_PROFILE``. When it is unset (or empty) the profile is
    ``"paper"`` if a CUDA device is present and ``"quick"`` otherwise. ``quick`` is what CI and a
    laptop run; ``paper`` is the paper's scale.

    Raises:
        ValueError: if ``BDK_PROFILE`` holds anything else.
    """
    value = os.environ.get("BDK_PROFILE", "").strip()
    if not value:
        return "paper" if torch.cuda.is_available() else "quick"
    if value not in PROFILES:
        raise ValueError(
            f"BDK_PROFILE={value!r} is not a profile; valid values are {', '.join(map(repr, PROFILES))}."
        )
    return value


class one_cpu_thread(contextlib.ContextDecorator):  # noqa: N801 (used like a function)
    """Run a block (or, as a decorator, a function) with one intra-op CPU thread, then restore the count.

    The book's quick experiments are small: per-operation overhead dominates, a second intra-op
    thread gains little on an idle machine, and on a busy 2-core machine the threads wait for each
    other at every operation (an MNIST-MLP step measured 8 ms on one thread and 260-310 ms on two
    while other jobs ran). Does nothing when the computation runs on a GPU.

    Args:
        device: the device the block computes on; by default :func:`get_device` at entry.
    """

    def __init__(self, device=None):
        self.device = device

    def __enter__(self):
        device = torch.device(self.device) if self.device is not None else get_device()
        self.before = torch.get_num_threads()
        if device.type == "cpu":
            torch.set_num_threads(1)
        return self

    def __exit__(self, *exc):
        torch.set_num_threads(self.before)
        return False
