"""The registry of reproducible experiments behind ``python -m bdk reproduce``.

Each experiment of the book registers itself with a name, its per-profile configurations and a
``run(config) -> dict`` function. The chapters and the command line both go through
:func:`run_experiment`, which caches the result by configuration (``bdk.load_or_run``), so the book
and the command never disagree.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .._runtime import profile as active_profile
from .._runtime import verbose as default_verbose
from ..cache import load_or_run
from ..config import describe, select, validate

__all__ = ["Experiment", "register", "get", "names", "select_config", "run_experiment", "supports_checkpoints",
           "checkpointing_names", "MODULES"]

# Modules whose import registers experiments (one per chapter).
MODULES = (
    "bdk.experiments.langevin",
    "bdk.experiments.sgd_sde",
    "bdk.experiments.sgld",
    "bdk.experiments.blr",
    "bdk.experiments.ivon",
    "bdk.experiments.bdk_toy",
    "bdk.experiments.bdk_toy_regression",
    "bdk.experiments.bdk_mnist",
    "bdk.experiments.bdk_boston",
    "bdk.experiments.bdk_teachers",
)

_REGISTRY: dict[str, "Experiment"] = {}


@dataclass(frozen=True)
class Experiment:
    """A named experiment: its configurations per profile and the function that runs one.

    Attributes:
        name: the command-line name, e.g. ``"bdk-mnist"``.
        chapter: the chapter (notebook) that shows it.
        description: one line for ``--list``.
        configs: one frozen dataclass per profile (``"quick"``, ``"paper"``).
        run: computes the results (a dict of numbers, lists, arrays or tensors) from a config.
        summary: optional; turns the results into a Markdown table (ours beside the paper's).
        figures: optional; turns the results into ``{file_stem: matplotlib Figure}``.
        combine: optional; merges the results of several seeds or chains (``--chains K``) into one
            dict (for example pooled samples and R-hat across chains).
        record: optional; the part of the results that ``--record`` keeps in ``data/records/``
            (for example a long loss curve thinned to a few hundred points); default: all of it.
    """

    name: str
    chapter: str
    description: str
    configs: Mapping[str, Any]
    run: Callable[[Any], dict]
    summary: Callable[[dict], str] | None = None
    figures: Callable[[dict], dict] | None = None
    combine: Callable[[list], dict] | None = None
    record: Callable[[dict], dict] | None = None
    tags: tuple[str, ...] = field(default_factory=tuple)


def register(experiment: Experiment) -> Experiment:
    """Add an experiment to the registry (re-registering the same name replaces it)."""
    _REGISTRY[experiment.name] = experiment
    return experiment


def _load_all() -> None:
    for module in MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise


def names() -> list[str]:
    """The names of every registered experiment, in chapter order."""
    _load_all()
    return list(_REGISTRY)


def get(name: str) -> Experiment:
    """The experiment called ``name``.

    Raises:
        KeyError: with the list of valid names, if there is no such experiment.
    """
    _load_all()
    if name not in _REGISTRY:
        raise KeyError(f"no experiment called {name!r}; valid names: {', '.join(_REGISTRY)} (or 'all').")
    return _REGISTRY[name]


def select_config(experiment: Experiment, profile: str | None = None) -> Any:
    """The experiment's configuration for a profile (default: the active one), without printing."""
    return select(experiment.configs, profile=profile, verbose=False)


def run_experiment(name: str, profile: str | None = None, overrides: Mapping[str, Any] | None = None,
                   force: bool = False, verbose: bool | None = None, checkpoint_every: int | None = None,
                   with_provenance: bool = False):
    """Run (or load from the cache) the experiment ``name`` in a profile; return its results.

    Args:
        name: a registered experiment.
        profile: ``"quick"`` or ``"paper"`` (default: the active profile).
        overrides: configuration fields to replace (e.g. ``{"seed": 3}``); they are part of the cache key.
        force: run again even if a cached result exists.
        verbose: print the configuration and where the result came from (default: ``BDK_VERBOSE``).
        checkpoint_every: save a checkpoint every this many iterations, for experiments whose
            configuration has a ``checkpoint_every`` field (the others do not checkpoint). How often a
            run checkpoints does not change its numbers (a resumed run restores every random number
            generator), so this setting is not part of the cache key.
        with_provenance: return ``(results, provenance)`` (``bdk.provenance.provenance`` of the run
            that computed them: the configuration as run, commit, versions, device, date, times).

    Raises:
        KeyError: for an unknown name.
        ValueError: when a field of the configuration breaks its rule (``bdk.config.validate``), or ``checkpoint_every`` is not a positive integer or the experiment cannot checkpoint.
    """
    experiment = get(name)
    verbose = default_verbose() if verbose is None else verbose
    profile = active_profile() if profile is None else profile
    config = select(experiment.configs, profile=profile, verbose=False)
    overrides = dict(overrides or {})
    if overrides:
        config = dataclasses.replace(config, **overrides)
    validate(config)  # a bad value fails here, before the work, not deep inside it
    if verbose:  # what actually runs: the overrides applied, and marked
        print(describe(config, profile, overrides))
    cache = dict(force=force, verbose=verbose, profile=profile, overrides=overrides, with_provenance=with_provenance)
    if checkpoint_every is None:
        return load_or_run(name, config, experiment.run, **cache)
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be a positive integer, got {checkpoint_every!r}.")
    if not supports_checkpoints(experiment):
        raise ValueError(f"{name} does not checkpoint; experiments that do: {', '.join(checkpointing_names())}.")
    # cached under the configuration as given; run with the checkpoint frequency replaced
    run_config = dataclasses.replace(config, checkpoint_every=checkpoint_every)
    return load_or_run(name, config, lambda _config: experiment.run(run_config), **cache)


def supports_checkpoints(experiment: Experiment) -> bool:
    """Whether the experiment's configurations have a ``checkpoint_every`` field (its long loops resume)."""
    return all(any(f.name == "checkpoint_every" for f in dataclasses.fields(c)) for c in experiment.configs.values())


def checkpointing_names() -> list[str]:
    """The experiments that checkpoint their long loops (``--checkpoint-every``)."""
    return [n for n in names() if supports_checkpoints(_REGISTRY[n])]
