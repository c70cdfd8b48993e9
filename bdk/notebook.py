"""The first cell of every chapter calls :func:`setup_notebook` (introduced in "Data and tools")."""

from __future__ import annotations

import inspect
import os
import platform
import textwrap

import torch

from ._runtime import __version__, get_device, profile, seed_everything
from .plotting import use_style

__all__ = ["setup_notebook", "show_source", "source_of"]


def source_of(obj) -> str:
    """The source code of a function, class or method of ``bdk``, as the installed library has it.

    Raises:
        TypeError: for an object that has no Python source (a builtin, an instance).
    """
    try:
        return textwrap.dedent(inspect.getsource(obj))
    except (TypeError, OSError) as err:
        raise TypeError(f"show_source needs a function, class or method written in Python, got {obj!r}.") from err


def show_source(*objs) -> None:
    """Show the source of each object on the page, as a highlighted Python block.

    The chapters call it on the library's kernels, so that the page shows the very code that runs,
    read from the installed ``bdk`` when the page is built. Outside IPython it prints the source.
    """
    text = "\n\n".join(source_of(obj).rstrip() for obj in objs)
    try:
        from IPython import get_ipython  # optional: only a notebook has IPython
        from IPython.display import Markdown, display  # optional, as above
    except ImportError:  # not in IPython: plain text
        print(text)
        return
    if get_ipython() is None:
        print(text)
        return
    display(Markdown(f"```python\n{text}\n```"))


def _retina_figures() -> None:
    """Inline figures as PNGs at twice their displayed resolution (sharp on high-density screens)."""
    try:
        from IPython import get_ipython  # optional: only a notebook has IPython
        from matplotlib_inline.backend_inline import set_matplotlib_formats  # optional: comes with IPython
    except ImportError:  # not in IPython
        return
    if get_ipython() is not None:
        set_matplotlib_formats("retina")


def setup_notebook(seed: int = 0) -> torch.device:
    """Seed every generator, apply the book's plot style, print the profile and device, return the device.

    It also sets ``BDK_VERBOSE=0`` unless it is set already, so that the page shows results rather than
    logs: no configuration dumps, cache or timing messages (each chapter shows its runs' provenance in
    one line instead). Set ``BDK_VERBOSE=1`` before the first cell to see them.

    If ``BDK_EXPECT_PROFILE`` is set (CI sets it), the active profile must equal it; otherwise a
    ``RuntimeError`` is raised, so a test run can never silently execute the wrong profile.
    """
    seed_everything(seed)
    os.environ.setdefault("BDK_VERBOSE", "0")
    use_style()
    _retina_figures()
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
