"""Command line: ``python -m bdk reproduce NAME|all`` and ``python -m bdk bench``.

    python -m bdk reproduce --list
    python -m bdk reproduce bdk-mnist --profile quick --out runs/
    python -m bdk reproduce all --profile paper --device cuda
    torchrun --nproc_per_node=4 -m bdk reproduce sgld-mixture --chains 4
    python -m bdk reproduce sgld-mixture --set num_chains=256      # change a configuration field
    python -m bdk reproduce bdk-boston --checkpoint-every 500      # kill it, run it again: it resumes
    python -m bdk bench --out runs/bench.json
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import hashlib
import json
import os
import sys
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import torch
import torch.distributed as dist

from . import _runtime
from .cache import CacheNotWritable, cache_dir, check_writable
from .config import to_jsonable, validate
from .data import DataMissing, load_mnist
from .experiments import bench, registry
from .provenance import describe_path_in_repo, record_path, write_record
from .timing import Stopwatch

__all__ = ["main", "to_jsonable", "UsageError"]


class UsageError(Exception):
    """A user error on the command line: printed as one line (what is wrong, what to do), exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line on stderr (exit 2) instead of the usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _distributed():
    """(rank, world_size), initialising torch.distributed when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


def _reproduce_one(name: str, args, rank: int, world: int) -> tuple[dict, dict | None]:
    """The results of one experiment and the provenance of the run that computed them."""
    experiment = registry.get(name)
    every = args.checkpoint_every if registry.supports_checkpoints(experiment) else None
    sets = args.overrides or {}
    chains = args.chains
    if chains > 1:
        base = dataclasses.replace(registry.select_config(experiment, args.profile), **sets)
        if not hasattr(base, "seed"):
            raise UsageError(f"{name}: --chains needs an experiment with a 'seed' in its configuration.")
        if world > 1 and world != chains:
            raise UsageError(f"--chains {chains} must equal the number of torchrun processes ({world}).")
        mine = [rank] if world > 1 else list(range(chains))
        local = [registry.run_experiment(name, args.profile, overrides={**sets, "seed": base.seed + k}, force=args.force,
                                         verbose=rank == 0, checkpoint_every=every, with_provenance=True) for k in mine]
        if world > 1:
            gathered = [None] * world if rank == 0 else None
            dist.gather_object(local[0], gathered, dst=0)
            local = gathered
        if rank != 0:
            return {}, None
        runs, provs = [r for r, _ in local], [p for _, p in local]
        prov = {"chains": provs}
        if experiment.combine is None:
            return {"chains": runs}, prov
        return experiment.combine(runs), prov
    return registry.run_experiment(name, args.profile, overrides=sets, force=args.force, checkpoint_every=every,
                                   with_provenance=True)


def _parse_sets(items: list[str], config) -> dict:
    """``["iterations=2000", "lr=1e-3"]`` -> ``{"iterations": 2000, "lr": 0.001}``, checked against the
    configuration's fields and the types of their values.

    Raises:
        ValueError: for a malformed item, an unknown field, or a value of another type.
    """
    fields = {f.name for f in dataclasses.fields(config)}
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set {item!r}: write FIELD=VALUE, e.g. --set iterations=2000.")
        if key not in fields:
            raise ValueError(f"--set {item!r}: {type(config).__name__} has no field {key!r}; its fields: {', '.join(sorted(fields))}.")
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            value = text.strip()
            if isinstance(getattr(config, key), float) and value.lower() in ("nan", "inf", "-inf", "+inf"):
                value = float(value)  # a float, refused later as not finite
        current = getattr(config, key)
        if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(current, tuple) and isinstance(value, list):
            value = tuple(value)
        if current is not None and type(value) is not type(current):
            raise ValueError(f"--set {item!r}: {key} is a {type(current).__name__} (now {current!r}), got a {type(value).__name__}.")
        out[key] = value
    return out


def _data_sources(config) -> list[str]:
    """The values of every ``*source`` field of a configuration (nested dataclasses included)."""
    found = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            found += _data_sources(value)
        elif f.name.endswith("source") and isinstance(value, str):
            found.append(value)
    return found


def _check_data(todo: list[str], profile: str, overrides: dict | None = None) -> str | None:
    """Before anything runs: the missing-data message if an experiment needs full MNIST that is not there.

    An experiment needs the full MNIST IDX files when a ``source`` of its configuration is ``"idx"``,
    or ``"auto"`` in the ``paper`` profile (``bdk.data.load_mnist``); the message of
    ``bdk.data.load_mnist`` says which files to put where."""
    needs = [name for name in todo
             if any(src == "idx" or (src == "auto" and profile == "paper")
                    for src in _data_sources(dataclasses.replace(registry.select_config(registry.get(name), profile),
                                                                 **(overrides or {}))))]
    if not needs:
        return None
    try:
        load_mnist(source="idx", verbose=False)
    except FileNotFoundError as err:
        return f"{', '.join(needs)} (profile {profile}) need(s) the full MNIST data set, which is missing. {err}"
    return None


def _write_outputs(name: str, results: dict, out: Path, seconds: float, force: bool = False,
                   prov: dict | None = None) -> list[str] | None:
    """Write results.json (the results and their provenance), and the experiment's figures and summary.md
    where it has them, into ``out/name``; return the names of the files written, or None if the figures
    and summary were already there for exactly these results (then they are not rendered again and the
    summary is printed)."""
    experiment = registry.get(name)
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(to_jsonable(results), indent=1)
    digest = hashlib.sha256(text.encode()).hexdigest()
    payload = json.dumps({"provenance": prov, "results": to_jsonable(results)}, indent=1)
    (folder / "results.json").write_text(payload)
    stamp = folder / ".outputs.json"
    if not force and stamp.is_file():
        try:
            recorded = json.loads(stamp.read_text())
        except ValueError:
            recorded = {}
        files = recorded.get("files", [])
        if recorded.get("digest") == digest and files and all((folder / f).is_file() for f in files):
            if (folder / "summary.md").is_file():
                summary = (folder / "summary.md").read_text().split("\n", 2)[-1].strip()
                if summary:
                    print(summary)
            return None
    stamp.unlink(missing_ok=True)
    written = ["results.json"]
    per_run = results["chains"] if experiment.combine is None and "chains" in results else [results]
    suffixes = [f"-chain{k}" for k in range(len(per_run))] if len(per_run) > 1 else [""]
    summaries = []
    for run, suffix in zip(per_run, suffixes):
        if experiment.figures is not None:
            matplotlib.use("Agg")  # files only, no window
            for stem, fig in experiment.figures(run).items():
                for ext in ("png", "svg"):
                    fig.savefig(folder / f"{stem}{suffix}.{ext}")
                    written.append(f"{stem}{suffix}.{ext}")
                plt.close(fig)
        if experiment.summary is not None:
            summaries.append((f"## chain {suffix[6:]}\n\n" if suffix else "") + experiment.summary(run))
    if experiment.summary is not None:
        summary = "\n\n".join(summaries)
        (folder / "summary.md").write_text(f"# {name}\n\n{summary}\n\nWall time: {seconds:.1f} s\n")
        written.append("summary.md")
        if summary:
            print(summary)
    else:
        (folder / "summary.md").unlink(missing_ok=True)  # an old one would describe other results
    stamp.write_text(json.dumps({"digest": digest, "files": written}))  # last: marks the outputs complete
    return written


def _written(files: list[str]) -> str:
    """``results.json, summary.md and 4 figure files``: what a run wrote, in words."""
    figures = [f for f in files if f.endswith((".png", ".svg"))]
    named = [f for f in files if f not in figures]
    parts = named + ([f"{len(figures)} figure file{'s' if len(figures) > 1 else ''} "
                      f"({len(figures) // 2} figure{'s' if len(figures) > 2 else ''}, PNG and SVG)"] if figures else [])
    return ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1]


def _check_out(out: Path, todo: list[str]) -> None:
    """Before anything runs: the output folder (and each experiment's folder in it) can be written."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder; give a folder (it is created if missing).")
    for name in todo:
        if (out / name).exists() and not (out / name).is_dir():
            raise UsageError(f"--out {out}: {out / name} is a file, where the outputs of {name} go; move it away.")
    try:
        check_writable(out, "the output folder")
    except CacheNotWritable as err:
        raise UsageError(f"--out {out}: {err}") from err


def _record(name: str, results: dict, prov: dict | None, args) -> None:
    """``--record``: write ``data/records/NAME[.LABEL].json`` (bdk.provenance.write_record)."""
    if prov is None or "chains" in prov:
        raise UsageError(f"{name}: --record needs one run whose provenance is known; run it with "
                         "--force (a cache entry written before provenance was kept has none), without --chains.")
    recorded = registry.get(name).record
    path = write_record(name, recorded(results) if recorded is not None else results, prov, args.record or None)
    print(f"{name}: recorded -> {describe_path_in_repo(path)} ({path.stat().st_size / 1024:.0f} KiB)")


def _check_profile_and_device(args) -> str:
    """The profile that will run (``--profile``, else ``BDK_PROFILE``, else by device), and ``--device``
    checked to exist; both before any work. Returns the profile."""
    if args.profile is not None and args.profile not in _runtime.PROFILES:
        raise UsageError(f"unknown profile {args.profile!r}; valid: {', '.join(_runtime.PROFILES)}.")
    if args.device:
        try:
            _runtime.check_device(args.device, "--device")
        except (RuntimeError, ValueError) as err:
            raise UsageError(str(err)) from err
        os.environ["BDK_DEVICE"] = args.device
    else:
        try:
            _runtime.get_device()
        except (RuntimeError, ValueError) as err:
            raise UsageError(str(err)) from err
    if args.profile:
        os.environ["BDK_PROFILE"] = args.profile
    try:
        return _runtime.profile()
    except ValueError as err:
        raise UsageError(f"{err} Set it to one of them, or pass --profile.") from err


def _check_arguments(args, todo: list[str], profile: str) -> dict:
    """Every check that can be made before a run; returns the parsed ``--set`` overrides."""
    for name in todo:
        try:
            registry.get(name)
        except KeyError as err:
            raise UsageError(err.args[0]) from err
    if args.checkpoint_every is not None and args.name != "all" and not registry.supports_checkpoints(registry.get(args.name)):
        raise UsageError(f"{args.name} does not checkpoint; --checkpoint-every applies to "
                         f"{', '.join(registry.checkpointing_names())}.")
    if args.record is not None and args.name == "all":
        raise UsageError("--record writes one experiment's record; name the experiment instead of 'all'.")
    if args.record is not None and args.chains > 1:
        raise UsageError("--record records one run; drop --chains.")
    if args.record:
        try:
            record_path(args.name, args.record)
        except ValueError as err:
            raise UsageError(f"--record {args.record!r}: {err}") from err
    overrides = {}
    if args.set:
        if args.name == "all":
            raise UsageError("--set changes one experiment's configuration; name the experiment instead of 'all'.")
        try:
            overrides = _parse_sets(args.set, registry.select_config(registry.get(args.name), profile))
        except ValueError as err:
            raise UsageError(str(err)) from err
    for name in todo:
        config = dataclasses.replace(registry.select_config(registry.get(name), profile), **overrides)
        try:
            validate(config)
        except ValueError as err:
            raise UsageError(f"{name}: {err}" + (" (from --set)" if overrides else "")) from err
    return overrides


def _cmd_reproduce(args) -> int:
    if args.list:
        for name in registry.names():
            exp = registry.get(name)
            print(f"{name:24s} {exp.chapter:28s} {exp.description}")
        return 0
    if not args.name:
        raise UsageError("give an experiment name, 'all', or --list.")
    profile = _check_profile_and_device(args)
    todo = registry.names() if args.name == "all" else [args.name]
    args.overrides = _check_arguments(args, todo, profile)
    missing = _check_data(todo, profile, args.overrides)
    if missing:
        raise UsageError(missing)
    out = Path(args.out)
    _check_out(out, todo)
    try:
        check_writable(cache_dir())
    except CacheNotWritable as err:
        raise UsageError(str(err)) from err
    rank, world = _distributed()
    with Stopwatch() as total:
        for name in todo:
            with Stopwatch() as clock:
                try:
                    results, prov = _reproduce_one(name, args, rank, world)
                except DataMissing as err:  # data the experiment needs (the message says where to put it)
                    print(f"reproduce: {name} (profile {profile}) stopped, data missing: {err}", file=sys.stderr)
                    return 1
                except ValueError as err:
                    if not args.overrides or os.environ.get("BDK_TRACEBACK"):
                        raise
                    raise UsageError(f"{name} stopped: {err} (with --set {' --set '.join(args.set)}; "
                                     "BDK_TRACEBACK=1 shows where)") from err
            seconds, cpu = clock.seconds, clock.cpu_seconds
            if rank == 0:
                with Stopwatch() as writing:
                    files = _write_outputs(name, results, out, seconds, force=args.force, prov=prov)
                if args.record is not None:
                    _record(name, results, prov, args)
                # CPU time beside the wall time: on a shared machine the wall time alone says little
                if files is not None:
                    print(f"{name}: done in {seconds:.1f} s (CPU {cpu:.1f} s); {_written(files)} written "
                          f"in {writing.seconds:.1f} s -> {out / name}")
                else:
                    print(f"{name}: done in {seconds:.1f} s (CPU {cpu:.1f} s); the outputs in {out / name} "
                          "are up to date")
    if rank == 0:
        print(f"reproduce: {len(todo)} experiment(s) in {total.seconds:.1f} s "
              f"(CPU {total.cpu_seconds:.1f} s, profile {profile})")
    if world > 1:
        dist.destroy_process_group()
    return 0


def _cmd_bench(args) -> int:
    if args.repeats < 1:
        raise UsageError(f"--repeats {args.repeats}: give at least 1 (each ratio is a median over the repeats).")
    out = Path(args.out)
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; give the JSON file to write, e.g. {out / 'bench.json'}.")
    _check_out(out.parent, [])
    table = bench.run(repeats=args.repeats)
    text = bench.format_table(table)
    print(text)
    out.write_text(json.dumps(to_jsonable(table), indent=1))
    print(f"bench: table written to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="python -m bdk", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("reproduce", help="run an experiment of the book (or all) and write its results")
    rep.add_argument("name", nargs="?", help="experiment name, or 'all'")
    rep.add_argument("--list", action="store_true", help="list the experiments")
    rep.add_argument("--profile", default=None, help="quick or paper (default: BDK_PROFILE, else by device)")
    rep.add_argument("--out", default="runs", help="output folder (default: runs/)")
    rep.add_argument("--chains", type=int, default=1, help="independent seeds/chains (one per torchrun process)")
    rep.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: BDK_DEVICE, else best)")
    rep.add_argument("--force", action="store_true", help="ignore cached results and run again")
    rep.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                     help="change a field of the experiment's configuration, e.g. --set iterations=2000 (repeatable; "
                          "part of the cache key, so the book's cached results are untouched)")
    rep.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                     help="checkpoint the long loops every N iterations (experiments with checkpoints; a killed "
                          "run given the same command resumes; the numbers and the cache key do not change)")
    rep.add_argument("--record", nargs="?", const="", default=None, metavar="LABEL",
                     help="also write the results with their provenance to data/records/NAME.json (or "
                          "NAME.LABEL.json), the record a chapter shows beside the paper's numbers")
    rep.set_defaults(func=_cmd_reproduce)
    ben = sub.add_parser("bench", help="measure step-cost ratios side by side and write them as JSON")
    ben.add_argument("--out", default="runs/bench.json")
    ben.add_argument("--repeats", type=int, default=30)
    ben.set_defaults(func=_cmd_bench)
    args = parser.parse_args(argv)
    if getattr(args, "chains", 1) < 1:
        parser.error("--chains must be at least 1")
    if getattr(args, "checkpoint_every", None) is not None and args.checkpoint_every < 1:
        parser.error("--checkpoint-every must be at least 1")
    try:
        return args.func(args)
    except UsageError as err:
        print(f"{args.command}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
