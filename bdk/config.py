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
import json
from typing import Any, Mapping, TypeVar

from ._runtime import PROFILES, profile as current_profile

__all__ = ["select", "describe", "config_hash", "config_dict"]

T = TypeVar("T")


def config_dict(config: Any) -> dict:
    """Return a JSON-serialisable dict of a dataclass configuration, with its class name."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"expected a dataclass instance as configuration, got {type(config).__name__}.")
    out = {"__class__": type(config).__name__}
    out.update(dataclasses.asdict(config))
    return out


def config_hash(config: Any, length: int = 12) -> str:
    """Return a short, stable hash of a dataclass configuration (class name and every field)."""
    payload = json.dumps(config_dict(config), sort_keys=True, default=repr)
    return hashlib.sha256(payload.encode()).hexdigest()[:length]


def select(configs: Mapping[str, T], profile: str | None = None, verbose: bool = True) -> T:
    """Pick the configuration of the active profile and print it.

    Args:
        configs: one dataclass instance per profile, keyed by ``"quick"`` and ``"paper"``.
        profile: the profile to use; by default :func:`bdk.profile`.
        verbose: print the profile and every field of the chosen configuration.

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
    if verbose:
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
