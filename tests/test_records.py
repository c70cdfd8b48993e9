"""Recorded paper-scale runs (data/records/): provenance, and a test that fails on a stale record."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bdk import provenance as P
from bdk.experiments import registry

ROOT = Path(__file__).resolve().parents[1]
RECORDS = sorted((ROOT / "data" / "records").glob("*.json"))


def _name_label(path: Path):
    stem = path.name[: -len(".json")]
    name, _, label = stem.partition(".")
    return name, label or None


@pytest.mark.parametrize("path", RECORDS, ids=[p.name for p in RECORDS])
def test_each_record_matches_the_current_configuration(path, monkeypatch):
    """A record whose configuration differs from the experiment's current one (with the record's
    overrides) is stale: the message names the experiment and the command that refreshes it."""
    monkeypatch.delenv("BDK_RECORDS_DIR", raising=False)
    name, label = _name_label(path)
    record = P.load_record(name, label)
    assert record.stale is None, f"{path.name} is stale: {record.stale}. Refresh it with: {record.refresh}"


@pytest.mark.parametrize("path", RECORDS, ids=[p.name for p in RECORDS])
def test_each_record_has_its_provenance(path):
    payload = json.loads(path.read_text())
    prov = payload["provenance"]
    for key in ("config", "overrides", "profile", "commit", "dirty", "versions", "device", "date",
                "wall_seconds", "cpu_seconds"):
        assert key in prov, f"{path.name}: provenance lacks {key!r}"
    assert set(prov["versions"]) >= {"bdk", "torch", "numpy", "python"}
    assert prov["device"]["type"] in ("cpu", "cuda", "mps") and prov["device"]["cpu"]
    assert prov["commit"] and len(prov["commit"]) == 40
    assert prov["wall_seconds"] > 0 and prov["cpu_seconds"] > 0
    assert path.stat().st_size < 2_000_000, f"{path.name} is {path.stat().st_size} bytes; keep records small"


def test_a_changed_configuration_makes_a_record_stale(tmp_path, monkeypatch):
    """The staleness check can fail: a record written for one configuration, then read against an
    experiment whose paper configuration has changed, names the changed field."""
    monkeypatch.setenv("BDK_RECORDS_DIR", str(tmp_path))
    exp = registry.get("bdk-boston")
    cfg = exp.configs["paper"]
    prov = P.provenance(cfg, profile="paper", wall_seconds=1.0, cpu_seconds=1.0)
    P.write_record("bdk-boston", {"x": 1.0}, prov)
    assert P.load_record("bdk-boston").stale is None
    changed = dict(exp.configs, paper=dataclasses.replace(cfg, iterations=cfg.iterations + 1))
    monkeypatch.setitem(registry._REGISTRY, "bdk-boston", dataclasses.replace(exp, configs=changed))
    reason = P.load_record("bdk-boston").stale
    assert reason is not None and "iterations" in reason
    assert "python -m bdk reproduce bdk-boston --profile paper --record" in P.load_record("bdk-boston").line()


def test_overrides_are_part_of_the_comparison(tmp_path, monkeypatch):
    monkeypatch.setenv("BDK_RECORDS_DIR", str(tmp_path))
    cfg = dataclasses.replace(registry.get("bdk-boston").configs["paper"], num_splits=3)
    P.write_record("bdk-boston", {}, P.provenance(cfg, profile="paper", overrides={"num_splits": 3}), label="three")
    assert P.load_record("bdk-boston", "three").stale is None
    P.write_record("bdk-boston", {}, P.provenance(cfg, profile="paper", overrides={}), label="bad")
    assert "num_splits" in P.load_record("bdk-boston", "bad").stale


def test_missing_record_says_how_to_write_it(tmp_path, monkeypatch):
    monkeypatch.setenv("BDK_RECORDS_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="--record"):
        P.load_record("bdk-boston")
    assert P.load_record("bdk-boston", required=False) is None


def test_reproduce_record_writes_results_and_provenance(tmp_path):
    """The command line: --record writes the record, results.json carries the same provenance, and the
    printed configuration shows the overrides that actually run."""
    env = {"BDK_RECORDS_DIR": str(tmp_path / "records"), "BDK_CACHE_DIR": str(tmp_path / "cache"),
           "BDK_PROGRESS": "0", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    cmd = [sys.executable, "-m", "bdk", "reproduce", "bdk-boston", "--profile", "quick", "--set", "num_splits=2",
           "--set", "iterations=2100", "--record", "tiny", "--out", str(tmp_path / "out")]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "num_splits = 2   (set)" in done.stdout and "iterations = 2100   (set)" in done.stdout
    record = json.loads((tmp_path / "records" / "bdk-boston.tiny.json").read_text())
    results = json.loads((tmp_path / "out" / "bdk-boston" / "results.json").read_text())
    assert record["provenance"]["overrides"] == {"num_splits": 2, "iterations": 2100}
    assert record["provenance"]["config"]["num_splits"] == 2
    assert results["provenance"]["config_hash"] == record["provenance"]["config_hash"]
    assert record["results"]["num_splits"] == 2 and len(record["results"]["splits"]) == 2
    assert record["refresh"].startswith("python -m bdk reproduce bdk-boston --profile quick --set num_splits=2")
