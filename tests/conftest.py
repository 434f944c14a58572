"""Shared fixtures: small CSV tables and configs written into the test's own tmp_path."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest


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
