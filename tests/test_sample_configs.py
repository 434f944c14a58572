"""The shipped sample configs load, and all_keys.toml really is every key with its default."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from traintop.engine.config import Config, load_config
from traintop.engine.data import load_data

SAMPLES = Path(__file__).resolve().parent.parent / "sample_configs"


@pytest.mark.parametrize("path", sorted(SAMPLES.glob("*.toml")), ids=lambda p: p.name)
def test_sample_config_loads_with_its_data(path):
    cfg = load_config(path)
    data = load_data(cfg)
    assert len(data.y["train"]) > 0 and data.input_dim > 0


def test_all_keys_lists_every_key_with_its_default():
    raw = tomllib.loads((SAMPLES / "all_keys.toml").read_text())
    defaults = Config().to_dict()
    assert {s: set(keys) for s, keys in raw.items()} == {s: set(keys) for s, keys in defaults.items()}
    resolved = load_config(SAMPLES / "all_keys.toml").to_dict()
    assert resolved == load_config(None).to_dict()


def test_csv_sample_has_gaps_and_a_categorical_column():
    cfg = load_config(SAMPLES / "plants_csv.toml")
    data = load_data(cfg)
    kinds = data.summary()["feature_types"]
    assert kinds["soil"] == "categorical" and kinds["sunlight_hours"] == "numeric"
    assert data.raw["train"]["sunlight_hours"].isna().any()
    assert not (data.x["train"] != data.x["train"]).any()  # every gap imputed
