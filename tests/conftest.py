"""Shared fixtures: every test gets its own results cache and a clean profile/device environment."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _isolated_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("BDK_CACHE_DIR", str(tmp_path / "bdk-cache"))
    monkeypatch.setenv("BDK_PROGRESS", "0")
    monkeypatch.delenv("BDK_DEVICE", raising=False)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.delenv("BDK_VERBOSE", raising=False)
    import bdk.data

    bdk.data._ANNOUNCED.clear()  # each test sees the loaders' one-line announcements afresh
    yield


@pytest.fixture
def one_thread():
    """One intra-op thread for the test (restored afterwards): the problems are tiny, and on a shared CPU
    extra threads only add synchronisation. Files opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    from bdk._runtime import one_cpu_thread

    with one_cpu_thread("cpu"):
        yield


@pytest.fixture
def generator():
    """A seeded CPU generator for tests that draw random numbers."""
    return torch.Generator().manual_seed(1234)
