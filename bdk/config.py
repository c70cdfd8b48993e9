"""Per-profile experiment configurations (introduced in "Data and tools").

Each experiment declares one frozen dataclass instance per profile::

    @dataclass(frozen=True)
    class DoubleWellConfig:
        num_particles: int
        num_steps: int

    CONFIGS = {"quick": DoubleWellConfig(2_000, 500), "paper": DoubleWellConfig(200_000, 5_000)}
    cfg = bdk.config.select(CONFIGS)  # prints the profile and the chosen configuration
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import math
from typing import Any, Mapping, TypeVar

import numpy as np
import torch

from ._runtime import PROFILES, profile as current_profile, verbose as verbose_default

__all__ = ["select", "describe", "config_hash", "config_dict", "canonical_json", "json_default", "to_jsonable", "validate"]

T = TypeVar("T")


def config_dict(config: Any) -> dict:
    """Return a JSON-serialisable dict of a dataclass configuration, with its class name."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"expected a dataclass instance as configuration, got {type(config).__name__}.")
    out = {"__class__": type(config).__name__}
    out.update(dataclasses.asdict(config))
    return out


def json_default(value: Any) -> Any:
    """The JSON form of a value that ``json`` cannot write: an array or tensor by its dtype, shape and the
    SHA-256 of its bytes (every element counts, unlike ``repr``, which abbreviates large arrays)."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch.Tensor
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        data = np.ascontiguousarray(value)
        return {"__array__": str(data.dtype), "shape": list(data.shape),
                "sha256": hashlib.sha256(data.tobytes()).hexdigest()}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    raise TypeError(f"a configuration field holds a {type(value).__module__}.{type(value).__qualname__}, "
                    "which has no stable text form; use numbers, strings, tuples, arrays or nested dataclasses.")


def to_jsonable(obj):
    """Convert results (tensors, arrays, dataclasses, numbers) to JSON-serialisable values.

    A plain object becomes its class name and its public attributes; a non-finite float its ``repr``
    (``"nan"``, ``"inf"``). Nothing is written as a ``repr`` that holds a memory address.

    Raises:
        TypeError: for a value with no JSON form (a function, a generator, ...).
    """
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.detach().cpu().numpy())
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        value = float(obj)
        return value if math.isfinite(value) else repr(value)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if hasattr(obj, "__dict__") and not isinstance(obj, type) and not inspect.isroutine(obj):
        # a plain object (a potential, say): its class and its public data (not caches such as _cast_cache)
        data = {k: v for k, v in vars(obj).items() if not k.startswith("_")}
        return {"__class__": f"{type(obj).__module__}.{type(obj).__qualname__}", **to_jsonable(data)}
    raise TypeError(f"results hold a {type(obj).__module__}.{type(obj).__qualname__}, which has no JSON form "
                    "(its repr would carry a memory address); return numbers, arrays, tensors or dicts of them.")


def canonical_json(obj: Any) -> str:
    """A canonical text of a JSON-like value: keys sorted, arrays and tensors by content.

    Raises:
        TypeError: for a value with no stable form (an arbitrary object, whose ``repr`` would carry a
            memory address or abbreviate its contents).
    """
    return json.dumps(obj, sort_keys=True, default=json_default)


def config_hash(config: Any, length: int = 12) -> str:
    """Return a short, stable hash of a dataclass configuration (class name and every field, every
    element of an array field included)."""
    return hashlib.sha256(canonical_json(config_dict(config)).encode()).hexdigest()[:length]


def select(configs: Mapping[str, T], profile: str | None = None, verbose: bool | None = None) -> T:
    """Pick the configuration of the active profile and print it.

    Args:
        configs: one dataclass instance per profile, keyed by ``"quick"`` and ``"paper"``.
        profile: the profile to use; by default :func:`bdk.profile`.
        verbose: print the profile and every field of the chosen configuration (default: ``BDK_VERBOSE``).

    Returns:
        The configuration of that profile.

    Raises:
        ValueError: if the profile is unknown or ``configs`` has no entry for it.
    """
    name = current_profile() if profile is None else profile
    if name not in PROFILES:
        raise ValueError(f"profile {name!r} is not a profile; valid values are {', '.join(map(repr, PROFILES))}.")
    if name not in configs:
        raise ValueError(f"no configuration for profile {name!r}; this experiment defines {sorted(configs)}.")
    config = configs[name]
    if (verbose_default() if verbose is None else verbose):
        print(describe(config, name))
    return config


def describe(config: Any, profile: str, overrides: Mapping[str, Any] | None = None) -> str:
    """The configuration as it runs, one field per line; fields changed by ``overrides`` are marked."""
    head = f"profile {profile}: {type(config).__name__}"
    if overrides:
        head += f" ({len(overrides)} field{'s' if len(overrides) > 1 else ''} set: {', '.join(overrides)})"
    return head + "".join(_field_lines(config, "    ", set(overrides or ())))


def _field_lines(config: Any, indent: str, marked: set = frozenset()) -> list[str]:
    """One line per field; a nested configuration gets its own indented block; ``marked`` fields say ``(set)``."""
    lines = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            lines.append(f"\n{indent}{f.name}: {type(value).__name__}")
            lines += _field_lines(value, indent + "    ")
        else:
            lines.append(f"\n{indent}{f.name} = {value!r}" + ("   (set)" if f.name in marked else ""))
    return lines


# Field-name conventions of the book's configurations (the naming table of book/conventions.md): a
# count is a positive integer unless its name says that zero means "none" or "off".
_ZERO_ALLOWED_INT = ("seed", "burn_in", "checkpoint_every", "validation", "warm", "removed", "ood")
_POSITIVE_FLOAT = ("lr", "step_size", "eps", "hess_init", "time", "lrs", "step_sizes", "candidates")
_NON_NEGATIVE_FLOAT = ("prior_precision", "weight_decay", "student_decay", "std", "times")
_UNIT_INTERVAL = ("beta1", "momentum", "dropout", "alpha")  # [0, 1)


def _check_value(where: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, tuple):
        for item in value:
            _check_value(where, name, item)
        return
    if isinstance(value, int):
        floor = 0 if any(part in name for part in _ZERO_ALLOWED_INT) else 1
        if value < floor:
            raise ValueError(f"{where} = {value!r}: must be an integer >= {floor}.")
        return
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{where} = {value!r}: must be a finite number.")
        if any(part in name for part in _UNIT_INTERVAL) and not 0.0 <= value < 1.0:
            raise ValueError(f"{where} = {value!r}: must lie in [0, 1).")
        if name.endswith("beta2") and not 0.0 <= value <= 1.0:
            raise ValueError(f"{where} = {value!r}: must lie in [0, 1].")
        if any(part in name for part in _NON_NEGATIVE_FLOAT) and value < 0:
            raise ValueError(f"{where} = {value!r}: must be >= 0.")
        elif not any(part in name for part in _NON_NEGATIVE_FLOAT) and any(part in name for part in _POSITIVE_FLOAT) \
                and value <= 0:
            raise ValueError(f"{where} = {value!r}: must be > 0.")


def validate(config: Any, prefix: str = "") -> Any:
    """Check every field of a configuration against the book's naming conventions, before a run.

    Counts (``num_steps``, ``batch_size``, ``hidden``, ...) must be integers >= 1 (>= 0 for seeds,
    burn-in, ``checkpoint_every`` and the like, where 0 means none); every float must be finite;
    learning rates, step sizes, ``eps``, times and ``hess_init`` positive; precisions, weight decays
    and standard deviations non-negative; ``beta1``, momenta, dropout rates and ``alpha`` in [0, 1),
    ``beta2`` in [0, 1]. Tuples are checked element by element. This catches a bad ``--set`` value
    before the work starts instead of deep inside it.

    Returns:
        The configuration, unchanged.

    Raises:
        ValueError: naming the first field that breaks its rule.
    """
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        where = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            validate(value, prefix=f"{where}.")
        else:
            _check_value(f"{type(config).__name__}.{where}" if not prefix else where, f.name, value)
    return config
