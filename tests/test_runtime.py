"""Tests of the shared helpers: bdk._runtime (device, seeding, profile), bdk.config (per-profile
configurations), bdk.cache (results cache, checkpoints, progress bars) and bdk.notebook."""

from __future__ import annotations

import dataclasses
import os
import random

import numpy as np
import pytest
import torch

import bdk
from bdk import cache, config
from bdk._runtime import get_device, profile, seed_everything


@dataclasses.dataclass(frozen=True)
class Cfg:
    num_steps: int
    lr: float = 0.1
    sizes: tuple = (2, 3)


@dataclasses.dataclass(frozen=True)
class OtherCfg:
    num_steps: int
    lr: float = 0.1
    sizes: tuple = (2, 3)


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv("BDK_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


# ---------------------------------------------------------------------------------------------
# get_device
# ---------------------------------------------------------------------------------------------


def test_device_override_cpu(monkeypatch):
    monkeypatch.setenv("BDK_DEVICE", " cpu ")
    assert get_device() == torch.device("cpu")
    assert bdk.get_device() == torch.device("cpu")


def test_device_default(monkeypatch):
    monkeypatch.delenv("BDK_DEVICE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert get_device().type == expected


def test_device_garbage_is_a_value_error(monkeypatch):
    monkeypatch.setenv("BDK_DEVICE", "garbage")
    with pytest.raises(ValueError, match="not a device string"):
        get_device()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:3"])
def test_device_cuda_without_cuda(monkeypatch, name):
    monkeypatch.setenv("BDK_DEVICE", name)
    with pytest.raises(RuntimeError, match="no CUDA device"):
        get_device()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_cuda_index_out_of_range(monkeypatch):
    monkeypatch.setenv("BDK_DEVICE", f"cuda:{torch.cuda.device_count()}")
    with pytest.raises(RuntimeError, match="only"):
        get_device()


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="needs a machine without MPS")
def test_device_mps_without_mps(monkeypatch):
    monkeypatch.setenv("BDK_DEVICE", "mps")
    with pytest.raises(RuntimeError, match="MPS"):
        get_device()


# ---------------------------------------------------------------------------------------------
# profile
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["quick", "paper", " paper "])
def test_profile_valid(monkeypatch, value):
    monkeypatch.setenv("BDK_PROFILE", value)
    assert profile() == value.strip()


@pytest.mark.parametrize("value", [None, ""])
def test_profile_default(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("BDK_PROFILE", raising=False)
    else:
        monkeypatch.setenv("BDK_PROFILE", value)
    assert profile() == ("paper" if torch.cuda.is_available() else "quick")


@pytest.mark.parametrize("value", ["Quick", "smoke", "fast", "1"])
def test_profile_invalid(monkeypatch, value):
    monkeypatch.setenv("BDK_PROFILE", value)
    with pytest.raises(ValueError, match="'quick', 'paper'"):
        profile()


# ---------------------------------------------------------------------------------------------
# seed_everything
# ---------------------------------------------------------------------------------------------


def _draws():
    return random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist()


@pytest.mark.parametrize("seed", [0, 1, 2**32 + 5, np.int64(7), 2**64 - 1])
def test_seed_everything_is_deterministic(seed):
    seed_everything(seed)
    first = _draws()
    seed_everything(seed)
    assert _draws() == first
    seed_everything(int(seed) + 1 if seed < 2**64 - 1 else 0)
    assert _draws() != first


@pytest.mark.parametrize("seed", [-1, 1.5, "3", True, None, 2**64])
def test_seed_everything_rejects_bad_seeds(seed):
    with pytest.raises(ValueError, match="seed"):
        seed_everything(seed)


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------

CONFIGS = {"quick": Cfg(10), "paper": Cfg(10_000, lr=0.01)}


def test_select_prints_and_returns_the_active_profile(monkeypatch, capsys):
    monkeypatch.setenv("BDK_PROFILE", "quick")
    assert config.select(CONFIGS) is CONFIGS["quick"]
    assert capsys.readouterr().out == "profile quick: Cfg\n    num_steps = 10\n    lr = 0.1\n    sizes = (2, 3)\n"
    assert config.select(CONFIGS, profile="paper") is CONFIGS["paper"]
    assert "num_steps = 10000" in capsys.readouterr().out
    config.select(CONFIGS, verbose=False)
    assert capsys.readouterr().out == ""


def test_select_prints_a_nested_configuration_one_field_per_line(capsys):
    @dataclasses.dataclass(frozen=True)
    class Outer:
        inner: Cfg = Cfg(5)
        name: str = "x"

    config.select({"quick": Outer(), "paper": Outer()}, profile="quick")
    assert capsys.readouterr().out == (
        "profile quick: Outer\n    inner: Cfg\n        num_steps = 5\n        lr = 0.1\n        sizes = (2, 3)\n"
        "    name = 'x'\n")


def test_select_errors(monkeypatch):
    with pytest.raises(ValueError, match="not a profile"):
        config.select(CONFIGS, profile="smoke")
    with pytest.raises(ValueError, match="no configuration for profile 'paper'"):
        config.select({"quick": Cfg(1)}, profile="paper")
    monkeypatch.setenv("BDK_PROFILE", "bogus")
    with pytest.raises(ValueError):
        config.select(CONFIGS)


def test_config_hash_and_dict():
    assert config.config_hash(Cfg(10)) == config.config_hash(Cfg(10))
    assert len(config.config_hash(Cfg(10))) == 12
    assert config.config_hash(Cfg(10)) != config.config_hash(Cfg(11))
    assert config.config_hash(Cfg(10)) != config.config_hash(Cfg(10, sizes=(2, 4)))
    assert config.config_hash(Cfg(10)) != config.config_hash(OtherCfg(10))  # the class name counts
    assert config.config_dict(Cfg(3)) == {"__class__": "Cfg", "num_steps": 3, "lr": 0.1, "sizes": (2, 3)}
    with pytest.raises(TypeError, match="dataclass"):
        config.config_dict({"num_steps": 3})
    with pytest.raises(TypeError, match="dataclass"):
        config.config_dict(Cfg)


# ---------------------------------------------------------------------------------------------
# load_or_run
# ---------------------------------------------------------------------------------------------


def test_load_or_run_runs_once_then_loads(cache_root, capsys):
    calls = []

    def fn(cfg):
        calls.append(cfg)
        return {"x": torch.arange(cfg.num_steps), "mean": 1.5}

    first = bdk.load_or_run("demo", Cfg(4), fn)
    # the messages name the file relative to BDK_CACHE_DIR (no temporary absolute path in the book)
    file_name = f"demo-{config.config_hash(Cfg(4))}.pt"
    out = capsys.readouterr().out
    assert out.startswith("demo: ran in ") and out.endswith(f"s; result cached as\n  {file_name} in $BDK_CACHE_DIR\n")
    assert str(cache_root) not in out
    second = bdk.load_or_run("demo", Cfg(4), fn)
    out = capsys.readouterr().out
    assert out.startswith("demo: loaded cached result (computed in ") and out.endswith(f"\n  {file_name} in $BDK_CACHE_DIR\n")
    assert str(cache_root) not in out
    assert len(calls) == 1
    assert torch.equal(first["x"], second["x"]) and second["mean"] == 1.5
    assert len(list(cache_root.glob("demo-*.pt"))) == 1
    # a different configuration is another file and another run
    bdk.load_or_run("demo", Cfg(5), fn)
    assert len(calls) == 2 and len(list(cache_root.glob("demo-*.pt"))) == 2
    # force recomputes; verbose=False is silent
    bdk.load_or_run("demo", Cfg(4), fn, force=True, verbose=False)
    assert len(calls) == 3 and capsys.readouterr().out.count("ran in") == 1  # only the Cfg(5) run


def test_load_or_run_directory_and_names(tmp_path, cache_root):
    out = bdk.load_or_run("x", Cfg(1), lambda c: 7, directory=tmp_path / "elsewhere", verbose=False)
    assert out == 7 and len(list((tmp_path / "elsewhere").glob("x-*.pt"))) == 1
    assert not cache_root.exists() or not list(cache_root.glob("x-*.pt"))
    for bad in ("", "a/b", "a b", "a\\b"):
        with pytest.raises(ValueError, match="file-name-safe"):
            bdk.load_or_run(bad, Cfg(1), lambda c: 0)
    with pytest.raises(TypeError, match="dataclass"):
        bdk.load_or_run("x", {"num_steps": 1}, lambda c: 0)


def test_load_or_run_detects_a_stale_file(cache_root):
    path = cache_root / f"demo-{config.config_hash(Cfg(2))}.pt"
    cache.atomic_save({"config": {"__class__": "Cfg", "num_steps": 999}, "result": "stale", "seconds": 0.0}, path)
    assert bdk.load_or_run("demo", Cfg(2), lambda c: "fresh", verbose=False) == "fresh"
    assert bdk.load_or_run("demo", Cfg(2), lambda c: "again", verbose=False) == "fresh"


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("BDK_CACHE_DIR", str(tmp_path / "a" / "b"))
    assert cache.cache_dir() == tmp_path / "a" / "b" and (tmp_path / "a" / "b").is_dir()


def test_describe_path_is_relative_to_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("BDK_CACHE_DIR", str(tmp_path / "cache"))
    assert cache.describe_path(tmp_path / "cache" / "x-123.pt") == "x-123.pt in $BDK_CACHE_DIR"
    assert cache.describe_path(tmp_path / "cache" / "sub" / "y.ckpt") == "sub/y.ckpt in $BDK_CACHE_DIR"
    assert cache.describe_path(tmp_path / "elsewhere.pt") == str(tmp_path / "elsewhere.pt")  # outside: the full path
    monkeypatch.delenv("BDK_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.describe_path(tmp_path / "home" / ".cache" / "bdk" / "z.pt") == "z.pt in ~/.cache/bdk"


# ---------------------------------------------------------------------------------------------
# Checkpointer and atomic_save
# ---------------------------------------------------------------------------------------------


def test_checkpointer_save_load_clear(tmp_path):
    ckpt = bdk.Checkpointer(tmp_path / "run.ckpt", every=3)
    assert ckpt.load() is None
    saved = [step for step in range(1, 11) if ckpt.maybe_save(step, lambda: {"step": step, "w": torch.ones(2) * step})]
    assert saved == [3, 6, 9]
    state = ckpt.load()
    assert state["step"] == 9 and torch.equal(state["w"], torch.full((2,), 9.0))
    ckpt.save({"step": 10})
    assert ckpt.load() == {"step": 10}
    ckpt.clear()
    assert ckpt.load() is None and not (tmp_path / "run.ckpt").exists()
    ckpt.clear()  # clearing twice is fine
    with pytest.raises(ValueError, match="every"):
        bdk.Checkpointer(tmp_path / "x", every=0)


def test_checkpointer_resumes_a_loop(tmp_path):
    def run(num_steps, stop_at=None):
        ckpt = bdk.Checkpointer(tmp_path / "loop.ckpt", every=2)
        state = ckpt.load() or {"step": 0, "total": 0}
        for step in range(state["step"], num_steps):
            if step == stop_at:
                raise KeyboardInterrupt
            state = {"step": step + 1, "total": state["total"] + step}
            ckpt.maybe_save(step + 1, lambda: state)
        return state["total"]

    with pytest.raises(KeyboardInterrupt):
        run(10, stop_at=7)  # last checkpoint at step 6
    assert run(10) == sum(range(10))


def test_checkpointer_says_where_it_resumes(cache_root, capsys):
    ckpt = bdk.Checkpointer(bdk.cache_dir() / "demo-abc.ckpt", every=5)
    assert ckpt.load() is None and capsys.readouterr().out == ""  # a fresh start is silent
    assert not ckpt.maybe_save(4, lambda: {"w": 4}) and ckpt.maybe_save(10, lambda: {"w": 10})
    assert ckpt.load() == {"w": 10}
    assert capsys.readouterr().out == "resuming from step 10 (demo-abc.ckpt in $BDK_CACHE_DIR)\n"
    ckpt.save({"w": 11})  # saved without a step
    assert ckpt.load() == {"w": 11} and "resuming from a checkpoint" in capsys.readouterr().out
    cache.atomic_save({"w": 12}, ckpt.path)  # a file written before the step was recorded: the state itself
    assert bdk.Checkpointer(ckpt.path, verbose=False).load() == {"w": 12} and capsys.readouterr().out == ""


def test_atomic_save_never_leaves_half_a_file(tmp_path, monkeypatch):
    path = tmp_path / "result.pt"
    cache.atomic_save({"good": 1}, path)

    def broken_save(obj, f, *args, **kwargs):
        with open(f, "wb") as handle:
            handle.write(b"half a fi")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        cache.atomic_save({"good": 2}, path)
    monkeypatch.undo()
    assert cache._load(path) == {"good": 1}  # the old file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.pt"]  # no temporary file left


# ---------------------------------------------------------------------------------------------
# progress and setup_notebook
# ---------------------------------------------------------------------------------------------


def test_progress(monkeypatch):
    monkeypatch.setenv("BDK_PROGRESS", "0")
    bar = bdk.progress(range(5), desc="x")
    assert bar.disable and list(bar) == [0, 1, 2, 3, 4]
    monkeypatch.setenv("BDK_PROGRESS", "1")
    bar = bdk.progress(range(3), disable=True)
    assert list(bar) == [0, 1, 2]


def test_setup_notebook(monkeypatch, capsys):
    monkeypatch.setenv("BDK_PROFILE", "quick")
    monkeypatch.setenv("BDK_DEVICE", "cpu")
    monkeypatch.delenv("BDK_EXPECT_PROFILE", raising=False)
    assert bdk.setup_notebook(seed=3) == torch.device("cpu")
    out = capsys.readouterr().out
    assert "profile: quick" in out and "device: cpu" in out and "seed: 3" in out
    first = torch.rand(2)
    bdk.setup_notebook(seed=3)
    assert torch.equal(torch.rand(2), first)
    monkeypatch.setenv("BDK_EXPECT_PROFILE", "paper")
    with pytest.raises(RuntimeError, match="expects profile 'paper'"):
        bdk.setup_notebook()
    assert os.environ["BDK_PROFILE"] == "quick"


def test_one_cpu_thread_sets_one_thread_and_restores_it_even_after_an_error():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with bdk._runtime.one_cpu_thread("cpu"):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2

        @bdk._runtime.one_cpu_thread("cpu")
        def failing():
            assert torch.get_num_threads() == 1
            raise KeyError("boom")

        with pytest.raises(KeyError):
            failing()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
