"""Results cache keyed by configuration and code, checkpoints that let long runs resume, and progress bars.

Introduced in "Data and tools". The cache lives in ``BDK_CACHE_DIR`` (default ``~/.cache/bdk``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from tqdm.std import tqdm as _text_tqdm

from ._runtime import verbose as _verbose
from .config import canonical_json, config_dict, config_hash
from .runinfo import git_state, provenance, source_digest, utc_now
from .timing import Stopwatch

__all__ = ["cache_dir", "describe_path", "load_or_run", "Checkpointer", "progress", "atomic_save",
           "check_writable", "CacheNotWritable"]


class CacheNotWritable(OSError):
    """A folder that results or checkpoints must be written to cannot be written (the message says what to do)."""


def cache_dir() -> Path:
    """Return the results/checkpoint directory: ``BDK_CACHE_DIR`` or ``~/.cache/bdk``.

    Raises:
        CacheNotWritable: if the folder cannot be created.
    """
    root = os.environ.get("BDK_CACHE_DIR")
    path = Path(root) if root else Path.home() / ".cache" / "bdk"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CacheNotWritable(f"the results cache {path} cannot be created ({err.strerror or err}); "
                               "set BDK_CACHE_DIR to a writable folder.") from err
    return path


def check_writable(folder: str | os.PathLike, what: str = "the results cache") -> Path:
    """Create ``folder`` if needed and check that a file can be written in it, before any work is done.

    Raises:
        CacheNotWritable: naming the folder and what to do.
    """
    folder = Path(folder)
    hint = "set BDK_CACHE_DIR to a writable folder" if what == "the results cache" else "choose a writable folder"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".bdk-write-check-")
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        raise CacheNotWritable(f"{what} {folder} is not writable ({err.strerror or type(err).__name__}); {hint}.") from err
    return folder


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
    return None if config is None else canonical_json(config)


def _rescue(entry: dict, path: Path, err: OSError) -> Path | None:
    """Save a computed result that could not be written to the cache somewhere else; return where."""
    rescue = Path(tempfile.gettempdir()) / "bdk-unsaved" / path.name
    try:
        atomic_save(entry, rescue)
    except OSError:
        return None
    return rescue


def _load(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=False)


def load_or_run(
    name: str,
    config: Any,
    fn: Callable[[Any], Any],
    *,
    directory: str | os.PathLike | None = None,
    force: bool = False,
    verbose: bool | None = None,
    profile: str | None = None,
    overrides: dict | None = None,
    with_provenance: bool = False,
) -> Any:
    """Return ``fn(config)``, computed once per configuration and cached on disk.

    The file is ``<directory>/<name>-<config_hash>.pt``; it stores the configuration and the
    digest of ``bdk``'s source (:func:`bdk.runinfo.source_digest`) beside the result, so a file
    with the same hash but different fields, or computed by other code, is recomputed (and says
    so). The folder is checked for writing before ``fn`` runs; if the result still cannot be saved
    after it ran, it is returned, saved under the temporary folder's ``bdk-unsaved/``, and the
    message says where. Messages name the file relative to ``BDK_CACHE_DIR`` (see :func:`describe_path`).

    Args:
        name: a file-name-safe experiment name.
        config: a dataclass configuration; every field takes part in the key.
        fn: computes the result from the configuration (tensors, arrays, dicts, numbers).
        directory: where to cache; by default :func:`cache_dir`.
        force: recompute even if a cached result exists.
        verbose: say whether the result was loaded or computed, and how long it took (default:
            ``bdk._runtime.verbose()``, i.e. ``BDK_VERBOSE``).
        profile, overrides: where the configuration came from, stored in the provenance.
        with_provenance: return ``(result, provenance)``: the provenance of the run that computed
            the result (``bdk.provenance.provenance``: configuration, commit, versions, device,
            date, wall and CPU time), stored in the cache beside it, with ``"from_cache": True``
            when it was loaded (``None`` for a cache file written before provenance was kept).

    Raises:
        CacheNotWritable: before ``fn`` runs, if the cache folder cannot be written.
    """
    if not name or any(c in name for c in "/\\ "):
        raise ValueError(f"name must be a non-empty file-name-safe string, got {name!r}.")
    verbose = _verbose() if verbose is None else verbose
    folder = Path(directory) if directory is not None else cache_dir()
    path = folder / f"{name}-{config_hash(config)}.pt"
    code = source_digest()
    if path.exists() and not force:
        try:
            stored = _load(path)
        except Exception as err:  # a truncated or foreign file: say so and recompute
            print(f"{name}: cached file {describe_path(path)} could not be read ({type(err).__name__}); running again")
            stored = {}
        if not isinstance(stored, dict):
            stored = {}
        if _canonical(stored.get("config")) == _canonical(config_dict(config)):
            if stored.get("code") == code:
                if verbose:
                    print(f"{name}: loaded cached result (computed in {stored['seconds']:.1f} s)\n"
                          f"  {describe_path(path)}")
                prov = stored.get("provenance")
                if prov is not None:
                    prov = {**prov, "from_cache": True}
                return (stored["result"], prov) if with_provenance else stored["result"]
            if verbose:  # recomputing is the right thing to do: news for a log, not for a page
                print(f"{name}: the cached result was computed by other code (bdk source "
                      f"{stored.get('code') or 'unknown'}, now {code}); running again")
    check_writable(folder)  # before the work, not after it
    git, started = git_state(), utc_now()
    with Stopwatch() as clock:
        result = fn(config)
    seconds = clock.seconds
    prov = provenance(config, profile=profile, overrides=overrides, wall_seconds=clock.seconds,
                      cpu_seconds=clock.cpu_seconds, git=git, started=started)
    entry = {"config": config_dict(config), "code": code, "result": result, "seconds": seconds, "provenance": prov}
    try:
        atomic_save(entry, path)
    except OSError as err:  # the work is done: keep it, say where, and go on
        rescue = _rescue(entry, path, err)
        where = f"saved instead to {rescue}" if rescue is not None else "not saved anywhere"
        print(f"{name}: the result could not be written to the cache ({err.strerror or type(err).__name__}: "
              f"{describe_path(path)}); it is returned, and {where}")
    else:
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
        """Return the saved state, or ``None`` if there is no checkpoint.

        A checkpoint that cannot be read (a truncated or foreign file) is moved aside to
        ``<name>.corrupt`` and ``None`` is returned, with a message that the run starts from the beginning.
        """
        if not self.path.exists():
            return None
        try:
            stored = _load(self.path)
        except Exception as err:  # truncated, foreign or from an incompatible version
            aside = self.path.with_name(self.path.name + ".corrupt")
            os.replace(self.path, aside)
            print(f"the checkpoint {describe_path(self.path)} could not be read ({type(err).__name__}); "
                  f"moved it to {aside.name} and starting from the beginning")
            return None
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
        import ipywidgets  # noqa: F401  (optional: only to find out whether widgets can render)
    except ImportError:
        return _text_tqdm
    from tqdm.auto import tqdm  # optional: imported only where widgets render (it warns without ipywidgets)

    return tqdm


def progress(iterable: Iterable | None = None, **kwargs) -> Any:
    """A tqdm progress bar; ``BDK_PROGRESS=0`` turns every bar off (the book build does)."""
    if os.environ.get("BDK_PROGRESS", "1") == "0":
        kwargs["disable"] = True
    kwargs.setdefault("mininterval", 1.0)
    kwargs.setdefault("dynamic_ncols", True)
    return _tqdm()(iterable, **kwargs)
