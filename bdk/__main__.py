"""Command line: ``python -m bdk reproduce NAME|all`` and ``python -m bdk bench``.

    python -m bdk reproduce --list
    python -m bdk reproduce bdk-mnist --profile quick --out runs/
    python -m bdk reproduce all --profile paper --device cuda
    torchrun --nproc_per_node=4 -m bdk reproduce sgld-mixture --chains 4
    python -m bdk bench --out runs/bench.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

__all__ = ["main", "to_jsonable"]


def to_jsonable(obj):
    """Convert results (tensors, arrays, dataclasses, numbers) to JSON-serialisable values."""
    import numpy as np
    import torch

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
    return repr(obj)


def _distributed():
    """(rank, world_size), initialising torch.distributed when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


def _reproduce_one(name: str, args, rank: int, world: int) -> dict:
    from .experiments import registry

    experiment = registry.get(name)
    chains = args.chains
    if chains > 1:
        base = registry.select_config(experiment, args.profile)
        if not hasattr(base, "seed"):
            raise SystemExit(f"{name}: --chains needs an experiment with a 'seed' in its configuration.")
        if world > 1 and world != chains:
            raise SystemExit(f"--chains {chains} must equal the number of torchrun processes ({world}).")
        mine = [rank] if world > 1 else list(range(chains))
        local = [registry.run_experiment(name, args.profile, overrides={"seed": base.seed + k}, force=args.force,
                                         verbose=rank == 0) for k in mine]
        if world > 1:
            import torch.distributed as dist

            gathered = [None] * world if rank == 0 else None
            dist.gather_object(local[0], gathered, dst=0)
            runs = gathered
        else:
            runs = local
        if rank != 0:
            return {}
        if experiment.combine is None:
            return {"chains": runs}
        return experiment.combine(runs)
    return registry.run_experiment(name, args.profile, force=args.force)


def _write_outputs(name: str, results: dict, out: Path, seconds: float) -> None:
    from .experiments import registry

    experiment = registry.get(name)
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(to_jsonable(results), indent=1))
    per_run = results["chains"] if experiment.combine is None and "chains" in results else [results]
    suffixes = [f"-chain{k}" for k in range(len(per_run))] if len(per_run) > 1 else [""]
    summaries = []
    for run, suffix in zip(per_run, suffixes):
        if experiment.figures is not None:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            for stem, fig in experiment.figures(run).items():
                fig.savefig(folder / f"{stem}{suffix}.png")
                fig.savefig(folder / f"{stem}{suffix}.svg")
                plt.close(fig)
        if experiment.summary is not None:
            summaries.append((f"## chain {suffix[6:]}\n\n" if suffix else "") + experiment.summary(run))
    summary = "\n\n".join(summaries)
    (folder / "summary.md").write_text(f"# {name}\n\n{summary}\n\nWall time: {seconds:.1f} s\n")
    if summary:
        print(summary)


def _cmd_reproduce(args) -> int:
    from . import _runtime
    from .experiments import registry

    if args.list:
        for name in registry.names():
            exp = registry.get(name)
            print(f"{name:24s} {exp.chapter:28s} {exp.description}")
        return 0
    if not args.name:
        print("reproduce: give an experiment name, 'all', or --list", file=sys.stderr)
        return 2
    if args.profile is not None and args.profile not in _runtime.PROFILES:
        print(f"reproduce: unknown profile {args.profile!r}; valid: {', '.join(_runtime.PROFILES)}", file=sys.stderr)
        return 2
    if args.device:
        os.environ["BDK_DEVICE"] = args.device
        _runtime.get_device()  # fail early with a clear message
    if args.profile:
        os.environ["BDK_PROFILE"] = args.profile
    todo = registry.names() if args.name == "all" else [args.name]
    for name in todo:
        try:
            registry.get(name)
        except KeyError as err:
            print(f"reproduce: {err.args[0]}", file=sys.stderr)
            return 2
    rank, world = _distributed()
    out = Path(args.out)
    total = time.perf_counter()
    for name in todo:
        start = time.perf_counter()
        results = _reproduce_one(name, args, rank, world)
        seconds = time.perf_counter() - start
        if rank == 0:
            _write_outputs(name, results, out, seconds)
            print(f"{name}: done in {seconds:.1f} s -> {out / name}")
    if rank == 0:
        print(f"reproduce: {len(todo)} experiment(s) in {time.perf_counter() - total:.1f} s (profile {_runtime.profile()})")
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    return 0


def _cmd_bench(args) -> int:
    from .experiments import bench

    table = bench.run(repeats=args.repeats)
    text = bench.format_table(table)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(to_jsonable(table), indent=1))
    print(f"bench: table written to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bdk", description=__doc__,
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
    rep.set_defaults(func=_cmd_reproduce)
    ben = sub.add_parser("bench", help="measure step-cost ratios side by side and write them as JSON")
    ben.add_argument("--out", default="runs/bench.json")
    ben.add_argument("--repeats", type=int, default=30)
    ben.set_defaults(func=_cmd_bench)
    args = parser.parse_args(argv)
    if getattr(args, "chains", 1) < 1:
        parser.error("--chains must be at least 1")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
