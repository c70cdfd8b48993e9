"""The command line: ``python -m bdk reproduce`` (listing, errors, outputs, the results cache, several
seeds in one process and in two torchrun processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bdk.__main__ import main

CHEAP = "blr-conjugate"  # a sub-second experiment of chapter 4


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


def test_reproduce_writes_results_and_then_reads_the_cache(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("BDK_PROFILE", "quick")
    assert main(["reproduce", CHEAP, "--out", str(tmp_path)]) == 0
    first = capsys.readouterr().out
    folder = tmp_path / CHEAP
    results = json.loads((folder / "results.json").read_text())
    assert (folder / "summary.md").read_text().startswith(f"# {CHEAP}")
    assert any(p.suffix == ".png" for p in folder.iterdir())
    assert "ran in" in first
    assert main(["reproduce", CHEAP, "--out", str(tmp_path)]) == 0
    second = capsys.readouterr().out
    assert "loaded cached result" in second
    assert json.loads((folder / "results.json").read_text()) == results


def test_chains_in_one_process_use_one_seed_each(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("BDK_PROFILE", "quick")
    assert main(["reproduce", CHEAP, "--chains", "2", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / CHEAP / "results.json").read_text())
    assert len(results["chains"]) == 2


@pytest.mark.slow
def test_two_torchrun_processes_gather_on_rank_zero(tmp_path):
    env = dict(os.environ, BDK_PROFILE="quick", OMP_NUM_THREADS="1", BDK_CACHE_DIR=str(tmp_path / "cache"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "bdk", "reproduce", CHEAP, "--chains", "2", "--out", str(tmp_path / "out")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((tmp_path / "out" / CHEAP / "results.json").read_text())
    assert len(results["chains"]) == 2
    # one cache file per seed, written by the two processes
    assert len(list(Path(tmp_path / "cache").glob(f"{CHEAP}-*.pt"))) == 2
