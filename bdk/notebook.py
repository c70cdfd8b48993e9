"""The first cell of every chapter calls :func:`setup_notebook` (introduced in "Data and tools")."""

from __future__ import annotations

import os
import platform

import torch

from ._runtime import get_device, profile, seed_everything

__all__ = ["setup_notebook"]


def setup_notebook(seed: int = 0) -> torch.device:
    """Seed every generator, apply the book's plot style, print the profile and device, return the device.

    If ``BDK_EXPECT_PROFILE`` is set (CI sets it), the active profile must equal it; otherwise a
    ``RuntimeError`` is raised, so a test run can never silently execute the wrong profile.
    """
    from . import __version__
    from .plotting import use_style

    seed_everything(seed)
    use_style()
    active = profile()
    expected = os.environ.get("BDK_EXPECT_PROFILE")
    if expected and expected != active:
        raise RuntimeError(
            f"this run expects profile {expected!r}, but bdk.profile() is {active!r}; "
            "set BDK_PROFILE accordingly (or unset BDK_EXPECT_PROFILE)."
        )
    device = get_device()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    print(f"bdk {__version__} | torch {torch.__version__}\nprofile: {active} | device: {device} ({name}) | seed: {seed}")
    return device
