"""Results cache keyed by configuration, checkpoints that let long runs resume, and progress bars.

Introduced in "Data and tools". The cache lives in ``BDK_CACHE_DIR`` (default ``~/.cache/bdk``).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from .config import config_dict, config_hash

__all__ = ["cache_dir", "describe_path", "load_or_run", "Checkpointer", "progress", "atomic_save"]


def cache_dir() -> Path:
    """Return the results/checkpoint directory: ``BDK_CACHE_DIR`` or ``~/.cache/bdk``."""
    root = os.environ.get("BDK_CACHE_DIR")
    path = Path(root) if root else Path.home() / ".cache" / "bdk"
    path.mkdir(parents=True, exist_ok=True)
    return path


def describe_path(path: str | os.PathLike) -> str:
    """A short, machine-independent name for a file, for messages printed into notebooks.

    A file inside :func:`cache_dir` is named relative to it, e.g.
    ``"bdk-mnist-1a2b3c4d5e6f.pt in $BDK_CACHE_DIR"`` (or ``"... in ~/.cache/bdk"`` when the variable
    is unset), which is enough to find it without printing a temporary absolute path; any other file
    is named by its full path.
    """
    path = Path(path)
    root = os.environ.get("BDK_CACHE_DIR")
    folder = Path(root) if root else Path.home() / ".cache" / "bdk"
    try:
        relative = path.resolve().relative_to(folder.resolve())
    except ValueError:
        return str(path)
    return f"{relative.as_posix()} in {'$BDK_CACHE_DIR' if root else '~/.cache/bdk'}"


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _canonical(config: dict | None) -> str | None:
    return None if config is None else json.dumps(config, sort_keys=True, default=repr)


def _load(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=False)


def load_or_run(
    name: str,
    config: Any,
    fn: Callable[[Any], Any],
    *,
    directory: str | os.PathLike | None = None,
    force: bool = False,
    verbose: bool = True,
    profile: str | None = None,
    overrides: dict | None = None,
    with_provenance: bool = False,
) -> Any:
    """Return ``fn(config)``, computed once per configuration and cached on disk.

    The file is ``<directory>/<name>-<config_hash>.pt``; it stores the configuration beside the
    result, so a stale file with the same hash but different fields is detected and recomputed.
    Messages name the file relative to ``BDK_CACHE_DIR`` (see :func:`describe_path`).

    Args:
        name: a file-name-safe experiment name.
        config: a dataclass configuration; every field takes part in the key.
        fn: computes the result from the configuration (tensors, arrays, dicts, numbers).
        directory: where to cache; by default :func:`cache_dir`.
        force: recompute even if a cached result exists.
        verbose: say whether the result was loaded or computed, and how long it took.
        profile, overrides: where the configuration came from, stored in the provenance.
        with_provenance: return ``(result, provenance)``: the provenance of the run that computed
            the result (``bdk.provenance.provenance``: configuration, commit, versions, device,
            date, wall and CPU time), stored in the cache beside it, with ``"from_cache": True``
            when it was loaded (``None`` for a cache file written before provenance was kept).
    """
    from .provenance import Timer, git_state, provenance, utc_now

    if not name or any(c in name for c in "/\\ "):
        raise ValueError(f"name must be a non-empty file-name-safe string, got {name!r}.")
    folder = Path(directory) if directory is not None else cache_dir()
    path = folder / f"{name}-{config_hash(config)}.pt"
    if path.exists() and not force:
        try:
            stored = _load(path)
        except Exception as err:  # a truncated or foreign file: say so and recompute
            print(f"{name}: cached file {describe_path(path)} could not be read ({type(err).__name__}); running again")
            stored = {}
        if _canonical(stored.get("config")) == _canonical(config_dict(config)):
            if verbose:
                print(f"{name}: loaded cached result (computed in {stored['seconds']:.1f} s)\n"
                      f"  {describe_path(path)}")
            prov = stored.get("provenance")
            if prov is not None:
                prov = {**prov, "from_cache": True}
            return (stored["result"], prov) if with_provenance else stored["result"]
    git, started = git_state(), utc_now()
    with Timer() as timer:
        result = fn(config)
    seconds = timer.wall
    prov = provenance(config, profile=profile, overrides=overrides, wall_seconds=timer.wall, cpu_seconds=timer.cpu,
                      git=git, started=started)
    atomic_save({"config": config_dict(config), "result": result, "seconds": seconds, "provenance": prov}, path)
    if verbose:
        print(f"{name}: ran in {seconds:.1f} s; result cached as\n  {describe_path(path)}")
    return (result, {**prov, "from_cache": False}) if with_provenance else result


class Checkpointer:
    """Save and restore the state of a long loop so that an interrupted run resumes where it stopped.

    Usage::

        ckpt = Checkpointer(cache_dir() / f"mnist-sgld-{config_hash(cfg)}.ckpt", every=500)
        state = ckpt.load()                       # None on a fresh start
        start = 0 if state is None else state["step"]
        if state is not None:
            model.load_state_dict(state["model"]); opt.load_state_dict(state["opt"])
        for step in range(start, num_steps):
            ...
            ckpt.maybe_save(step + 1, lambda: {"step": step + 1, "model": model.state_dict(), ...})
        ckpt.clear()

    The state must hold everything the loop's future depends on, random number generators included
    (``torch.get_rng_state()``, ``generator.get_state()``), so that the resumed run ends with exactly
    the numbers of an uninterrupted one. The file also records the step it was saved at; :meth:`load`
    prints ``resuming from step K`` with the file's name relative to ``BDK_CACHE_DIR``.

    Args:
        path: the checkpoint file.
        every: save every ``every`` steps (``maybe_save`` with ``step % every == 0``).
        verbose: say when :meth:`load` resumes from a checkpoint.
    """

    _FORMAT = "bdk-checkpoint-1"

    def __init__(self, path: str | os.PathLike, every: int = 1000, verbose: bool = True):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive integer number of steps, got {every!r}.")
        self.path = Path(path)
        self.every = int(every)
        self.verbose = bool(verbose)

    def load(self) -> Any | None:
        """Return the saved state, or ``None`` if there is no checkpoint."""
        if not self.path.exists():
            return None
        stored = _load(self.path)
        if isinstance(stored, dict) and stored.get("format") == self._FORMAT:
            step, state = stored["step"], stored["state"]
        else:  # a file written before the step was recorded: the state itself
            step, state = None, stored
        if self.verbose:
            what = "a checkpoint" if step is None else f"step {step}"
            print(f"resuming from {what} ({describe_path(self.path)})")
        return state

    def save(self, state: Any, step: int | None = None) -> None:
        """Save ``state`` atomically (with the step it belongs to, if given)."""
        atomic_save({"format": self._FORMAT, "step": step, "state": state}, self.path)

    def maybe_save(self, step: int, state_fn: Callable[[], Any]) -> bool:
        """Save ``state_fn()`` if ``step`` is a multiple of ``every``; return whether it saved."""
        if step % self.every == 0:
            self.save(state_fn(), step=step)
            return True
        return False

    def clear(self) -> None:
        """Delete the checkpoint (call when the run has finished and its result is stored)."""
        if self.path.exists():
            self.path.unlink()


def _tqdm():
    try:  # widgets where they render (Jupyter/Colab with ipywidgets), text elsewhere
        import ipywidgets  # noqa: F401

        from tqdm.auto import tqdm
    except ImportError:
        from tqdm.std import tqdm
    return tqdm


def progress(iterable: Iterable | None = None, **kwargs) -> Any:
    """A tqdm progress bar; ``BDK_PROGRESS=0`` turns every bar off (the book build does)."""
    if os.environ.get("BDK_PROGRESS", "1") == "0":
        kwargs["disable"] = True
    kwargs.setdefault("mininterval", 1.0)
    kwargs.setdefault("dynamic_ncols", True)
    return _tqdm()(iterable, **kwargs)
