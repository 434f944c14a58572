"""Shared fixtures: small CSV tables and configs written into the test's own tmp_path."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from traintop.engine.runstore import resolve_run

TRAINTOP = [sys.executable, "-m", "traintop.tui"]


@pytest.fixture
def write_csv(tmp_path):
    """Write a DataFrame as a CSV file in tmp_path and return its path."""

    def write(frame: pd.DataFrame, name: str = "table.csv") -> Path:
        path = tmp_path / name
        frame.to_csv(path, index=False)
        return path

    return write


@pytest.fixture
def write_config(tmp_path):
    """Write TOML text as a config file in tmp_path and return its path."""

    def write(text: str, name: str = "config.toml") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


@pytest.fixture
def engines():
    """Run folders of engine processes a test started; any still running is killed after the test,
    so a failed test never leaves one training."""
    folders: list = []
    yield folders
    for folder in folders:
        pid = (folder.read_json("meta.json") or {}).get("pid")
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def live_run(tmp_path, engines):
    """A digits run training in an engine process of its own (`traintop run --detach`)."""
    runs = tmp_path / "runs"
    proc = subprocess.run([*TRAINTOP, "run", "--detach", "--runs-dir", str(runs), "--set", "train.epochs=100000",
                           "--set", "early_stopping.enabled=false"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    folder = resolve_run(proc.stdout.split()[0], runs)
    engines.append(folder)
    return folder
