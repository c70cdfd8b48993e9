"""The command line: ``python -m bdk reproduce`` (listing, errors, outputs, the results cache, several
seeds in one process and in two torchrun processes)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bdk.__main__ import main
from bdk.data import DataMissing
from bdk.experiments import registry

CHEAP = "blr-conjugate"  # a sub-second experiment of chapter 4
# A checkpointing experiment (a bdk.distill.StackedDistiller loop) cut down to a few seconds: one Boston split,
# 1,000 distillation iterations. --set changes its configuration (and so its cache key).
RESUMABLE = ["bdk-boston", "--set", "num_splits=1", "--set", "iterations=1000", "--set", "burn_in=300",
             "--set", "sgd_iterations=100"]


def test_list_names_every_chapter(capsys):
    assert main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    for name in ("langevin-mala", "sgld-mixture", "blr-conjugate", "ivon-mnist", "bdk-mnist", "bdk-boston"):
        assert name in out


def test_unknown_name_and_profile_are_clear_errors(capsys, tmp_path):
    assert main(["reproduce", "no-such-experiment", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no experiment called 'no-such-experiment'" in err and CHEAP in err
    assert main(["reproduce", CHEAP, "--profile", "smoke", "--out", str(tmp_path)]) == 2
    assert "unknown profile 'smoke'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["reproduce", CHEAP, "--chains", "0"])
    with pytest.raises(SystemExit):
        main(["reproduce", CHEAP, "--checkpoint-every", "0"])


def test_set_and_checkpoint_every_errors(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("BDK_PROFILE", "quick")
    out = ["--out", str(tmp_path)]
    assert main(["reproduce", "bdk-boston", "--set", "no_such_field=1", *out]) == 2
    assert "has no field 'no_such_field'" in capsys.readouterr().err
    assert main(["reproduce", "bdk-boston", "--set", "num_splits=two", *out]) == 2
    assert "num_splits is a int" in capsys.readouterr().err
    assert main(["reproduce", "bdk-boston", "--set", "num_splits", *out]) == 2
    assert "FIELD=VALUE" in capsys.readouterr().err
    assert main(["reproduce", "all", "--set", "seed=1", *out]) == 2
    assert "instead of 'all'" in capsys.readouterr().err
    assert main(["reproduce", CHEAP, "--checkpoint-every", "10", *out]) == 2
    assert f"{CHEAP} does not checkpoint" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing ran


def test_paper_run_without_full_mnist_says_where_to_put_it(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("BDK_PROFILE", "quick")  # main() sets BDK_PROFILE=paper; this restores it afterwards
    monkeypatch.setenv("BDK_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("BDK_DOWNLOAD", raising=False)
    start = time.perf_counter()
    assert main(["reproduce", "bdk-mnist", "--profile", "paper", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "bdk-mnist (profile paper) need(s) the full MNIST data set, which is missing" in err
    assert f"Put them in {tmp_path / 'data' / 'mnist'}/" in err and "BDK_DATA_DIR" in err
    assert "train-images-idx3-ubyte" in err
    assert not (tmp_path / "out").exists() and time.perf_counter() - start < 30  # checked before anything runs


def test_data_missing_during_a_run_is_a_clear_error(capsys, tmp_path, monkeypatch):
    @dataclasses.dataclass(frozen=True)
    class NeedsData:
        seed: int = 0

    def run(cfg):
        raise DataMissing("foo.csv not found. Put it in /somewhere/data/foo/.")

    monkeypatch.setenv("BDK_PROFILE", "quick")
    registry.names()  # load the real experiments first, then add a fake one for this test only
    monkeypatch.setitem(registry._REGISTRY, "needs-data",
                        registry.Experiment("needs-data", "none", "test", {"quick": NeedsData(), "paper": NeedsData()}, run))
    assert main(["reproduce", "needs-data", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("reproduce: needs-data (profile quick) stopped, data missing: foo.csv not found. Put it in")


def test_reproduce_writes_results_and_then_reads_the_cache(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("BDK_PROFILE", "quick")
    assert main(["reproduce", CHEAP, "--out", str(tmp_path)]) == 0
    first = capsys.readouterr().out
    folder = tmp_path / CHEAP
    results = json.loads((folder / "results.json").read_text())
    assert (folder / "summary.md").read_text().startswith(f"# {CHEAP}")
    assert any(p.suffix == ".png" for p in folder.iterdir())
    assert "ran in" in first
    # the last line gives the wall time
    assert re.fullmatch(r"reproduce: 1 experiment\(s\) in \d+\.\d s \(CPU \d+\.\d s, profile quick\)", first.strip().splitlines()[-1])
    assert main(["reproduce", CHEAP, "--out", str(tmp_path)]) == 0
    second = capsys.readouterr().out
    assert "loaded cached result" in second
    again = json.loads((folder / "results.json").read_text())
    assert again["results"] == results["results"]
    # the provenance is that of the run that computed the results, marked as loaded from the cache
    assert results["provenance"]["from_cache"] is False and again["provenance"]["from_cache"] is True
    assert again["provenance"]["date"] == results["provenance"]["date"]
    assert again["provenance"]["config"] == results["provenance"]["config"]
    # the outputs of these very results are already there: nothing is rendered again
    assert "are up to date" in second
    png = next(p for p in folder.iterdir() if p.suffix == ".png")
    png.unlink()  # ... unless one of them is missing
    assert main(["reproduce", CHEAP, "--out", str(tmp_path)]) == 0
    assert "written in" in capsys.readouterr().out and png.is_file()
    assert main(["reproduce", CHEAP, "--out", str(tmp_path), "--force"]) == 0  # --force renders again
    assert "written in" in capsys.readouterr().out


def test_chains_in_one_process_use_one_seed_each(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("BDK_PROFILE", "quick")
    assert main(["reproduce", CHEAP, "--chains", "2", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / CHEAP / "results.json").read_text())
    assert len(results["results"]["chains"]) == 2
    # each chain's provenance names its own seed
    assert [p["config"]["seed"] for p in results["provenance"]["chains"]] == [0, 1]


@pytest.mark.slow
def test_two_torchrun_processes_gather_on_rank_zero(tmp_path):
    env = dict(os.environ, BDK_PROFILE="quick", OMP_NUM_THREADS="1", BDK_CACHE_DIR=str(tmp_path / "cache"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "bdk", "reproduce", CHEAP, "--chains", "2", "--out", str(tmp_path / "out")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((tmp_path / "out" / CHEAP / "results.json").read_text())
    assert len(results["results"]["chains"]) == 2
    # one cache file per seed, written by the two processes
    assert len(list(Path(tmp_path / "cache").glob(f"{CHEAP}-*.pt"))) == 2


def _reproduce_cmd(out, *extra):
    return [sys.executable, "-m", "bdk", "reproduce", *RESUMABLE, "--profile", "quick", "--out", str(out), *extra]


def _env(cache):
    return dict(os.environ, OMP_NUM_THREADS="1", BDK_PROGRESS="0", BDK_CACHE_DIR=str(cache), PYTHONUNBUFFERED="1")


def _numbers(folder):
    results = json.loads((folder / "bdk-boston" / "results.json").read_text())["results"]
    results.pop("total_seconds")  # the wall time is the one field that may differ (and the provenance)
    return results


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_checkpoint_and_ends_with_the_same_numbers(tmp_path):
    # Uninterrupted, in its own cache, without checkpoints.
    ref = subprocess.run(_reproduce_cmd(tmp_path / "ref"), env=_env(tmp_path / "ref-cache"),
                         capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stdout + ref.stderr
    # Checkpoint every 50 iterations; SIGKILL as soon as the first checkpoint file is there.
    cache = tmp_path / "cache"
    cmd = _reproduce_cmd(tmp_path / "out", "--checkpoint-every", "50")
    proc = subprocess.Popen(cmd, env=_env(cache), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not list(cache.glob("bdk-boston-*.ckpt")):
        assert proc.poll() is None, "the run finished before it wrote a checkpoint"
        assert time.monotonic() < deadline, "no checkpoint after 600 s"
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    assert not list(cache.glob("*.pt")) and not (tmp_path / "out" / "bdk-boston" / "results.json").exists()
    # The command again, even with another checkpoint frequency, resumes, says so, and ends with exactly
    # the uninterrupted run's numbers.
    resumed = subprocess.run(_reproduce_cmd(tmp_path / "out", "--checkpoint-every", "70"), env=_env(cache),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    match = re.search(r"resuming from step (\d+) \((bdk-boston-\w+-stacked\.ckpt) in \$BDK_CACHE_DIR\)", resumed.stdout)
    assert match, resumed.stdout
    assert 50 <= int(match.group(1)) < 1000 and int(match.group(1)) % 50 == 0
    assert _numbers(tmp_path / "out") == _numbers(tmp_path / "ref")
    assert not list(cache.glob("*.ckpt")) and len(list(cache.glob("bdk-boston-*.pt"))) == 1  # cleared, result cached
    # and a third run reads the cache (the same key with or without --checkpoint-every)
    again = subprocess.run(_reproduce_cmd(tmp_path / "out"), env=_env(cache), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "loaded cached result" in again.stdout, again.stdout + again.stderr
