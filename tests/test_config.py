"""The config: defaults, `--set` overrides, and the errors a user sees for a bad key or value."""

from __future__ import annotations

import re
import tomllib

import pytest

from traintop.engine.config import build_config, load_config, parse_override
from traintop.engine.errors import UserError

RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def error_of(*args, **kwargs) -> str:
    """The message of the UserError that load_config raises."""
    with pytest.raises(UserError) as e:
        load_config(*args, **kwargs)
    return str(e.value)


# -- defaults ---------------------------------------------------------------------------------------

def test_no_config_is_the_digits_demo():
    cfg = load_config()
    assert cfg.data.source == "digits"
    assert cfg.model.kind == "mlp"
    assert cfg.model.hidden == [128, 128]
    assert cfg.optim.name == "adam" and cfg.optim.lr == 0.001
    assert cfg.train.epochs == 20
    assert cfg.data.split == [0.7, 0.15, 0.15]
    assert cfg.early_stopping.enabled and cfg.early_stopping.patience == 5
    assert cfg.run.name == "digits-mlp"


def test_empty_config_file_is_the_same_as_no_config(write_config):
    assert load_config(write_config("")) == load_config()


def test_run_name_follows_source_and_model():
    cfg = load_config(None, ["data.source=iris", "model.kind=linear"])
    assert cfg.run.name == "iris-linear"


def test_csv_run_name_is_the_file_stem():
    cfg = build_config({"data": {"source": "csv", "path": "data/houses.csv", "target": "price"}})
    assert cfg.run.name == "houses-mlp"


def test_csv_file_with_spaces_in_its_name_still_gets_a_usable_run_name():
    cfg = build_config({"data": {"source": "csv", "path": "sales 2024 (v2).csv", "target": "y"}})
    assert RUN_NAME.match(cfg.run.name), cfg.run.name
    assert cfg.run.name.startswith("sales") and cfg.run.name.endswith("-mlp")


def test_explicit_run_name_is_kept():
    cfg = build_config({"run": {"name": "my-run"}, "data": {"source": "wine"}})
    assert cfg.run.name == "my-run"


def test_relative_data_path_resolves_against_the_config_folder(tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    path = folder / "c.toml"
    path.write_text('[data]\nsource = "csv"\npath = "data/t.csv"\ntarget = "y"\n')
    cfg = load_config(path)
    assert cfg.resolve_path(cfg.data.path) == folder / "data" / "t.csv"


# -- --set ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("train.epochs=3", ("train", "epochs", 3)),
    ("optim.lr=1e-3", ("optim", "lr", 0.001)),
    ("data.augment=true", ("data", "augment", True)),
    ("model.hidden=[64,64]", ("model", "hidden", [64, 64])),
    ("data.features=['a', 'b']", ("data", "features", ["a", "b"])),
    ('run.name="quoted"', ("run", "name", "quoted")),
    ("data.source=iris", ("data", "source", "iris")),
    ("data.path=data/my table.csv", ("data", "path", "data/my table.csv")),
])
def test_set_value_is_toml_and_a_bare_word_is_a_string(text, expected):
    assert parse_override(text) == expected


def test_set_overrides_the_config_file(write_config):
    path = write_config("[train]\nepochs = 5\n[model]\nhidden = [8]\n")
    cfg = load_config(path, ["train.epochs=2", "model.hidden=[64, 32]"])
    assert cfg.train.epochs == 2
    assert cfg.model.hidden == [64, 32]


def test_set_integer_is_accepted_for_a_number_key():
    cfg = load_config(None, ["optim.lr=1"])
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)


def test_set_without_equals_shows_the_expected_form():
    message = error_of(None, ["train.epochs"])
    assert "KEY=VALUE" in message and "train.epochs" in message


def test_set_key_without_a_section_is_refused():
    message = error_of(None, ["epochs=3"])
    assert "section.key" in message


def test_unknown_key_from_set_names_the_override():
    message = error_of(None, ["train.epoch=3"])
    assert "--set train.epoch=3" in message
    assert 'did you mean "epochs"' in message


# -- mistakes in a config file ----------------------------------------------------------------------

def test_unknown_section_suggests_the_close_one(write_config):
    path = write_config("[trian]\nepochs = 3\n")
    message = error_of(path)
    assert str(path) in message
    assert "[trian]" in message
    assert 'did you mean "train"' in message


def test_unknown_key_suggests_the_close_one_and_lists_the_allowed(write_config):
    path = write_config("[train]\nepoch = 3\n")
    message = error_of(path)
    assert str(path) in message
    assert "train.epoch" in message
    assert 'did you mean "epochs"' in message
    assert "epochs, loss, grad_clip" in message


def test_wrong_type_names_the_key_the_file_and_the_type(write_config):
    path = write_config('[train]\nepochs = "ten"\n')
    message = error_of(path)
    assert str(path) in message
    assert "train.epochs" in message
    assert "integer" in message
    assert "'ten'" in message


@pytest.mark.parametrize("line, key", [
    ("[train]\nepochs = 2.5", "train.epochs"),
    ("[train]\nepochs = true", "train.epochs"),
    ("[model]\nhidden = [64, \"wide\"]", "model.hidden"),
    ("[data]\nsplit = 0.7", "data.split"),
])
def test_values_of_the_wrong_type_are_refused(write_config, line, key):
    assert key in error_of(write_config(line + "\n"))


def test_bad_choice_lists_the_allowed_values(write_config):
    path = write_config('[optim]\nname = "adma"\n')
    message = error_of(path)
    assert "optim.name" in message
    assert 'did you mean "adam"' in message
    assert "sgd, adam, adamw, rmsprop" in message


def test_split_must_sum_to_one(write_config):
    message = error_of(write_config("[data]\nsplit = [0.7, 0.2, 0.2]\n"))
    assert "data.split" in message and "sum to 1" in message


def test_split_needs_three_fractions(write_config):
    message = error_of(write_config("[data]\nsplit = [0.5, 0.5]\n"))
    assert "data.split" in message and "three" in message


def test_split_summing_to_one_is_accepted():
    assert load_config(None, ["data.split=[0.8, 0.1, 0.1]"]).data.split == [0.8, 0.1, 0.1]


def test_epochs_must_be_positive():
    assert "greater than 0" in error_of(None, ["train.epochs=0"])


def test_csv_source_needs_a_path_and_a_target():
    assert "data.path" in error_of(None, ["data.source=csv"])
    assert "data.target" in error_of(None, ["data.source=csv", "data.path=t.csv"])


def test_missing_config_file_is_named(tmp_path):
    path = tmp_path / "nope.toml"
    message = error_of(path)
    assert str(path) in message and "does not exist" in message


def test_config_path_that_is_a_folder_is_refused(tmp_path):
    assert "not a file" in error_of(tmp_path)


def test_invalid_toml_is_reported_with_the_file(write_config):
    path = write_config("[train\nepochs = \n")
    message = error_of(path)
    assert str(path) in message and "not valid TOML" in message


# -- the resolved config ----------------------------------------------------------------------------

def test_to_toml_round_trips_through_build_config():
    cfg = build_config({
        "run": {"seed": 7, "device": "cpu"},
        "data": {"source": "csv", "path": "t.csv", "target": "y", "features": ["a", "b"],
                 "split": [0.8, 0.1, 0.1], "batch_size": 16},
        "model": {"hidden": [32], "dropout": 0.25},
        "optim": {"name": "sgd", "lr": 1e-5, "nesterov": True},
        "schedule": {"name": "cosine", "warmup_steps": 10},
        "train": {"epochs": 3, "grad_clip": 1.0},
        "early_stopping": {"enabled": False, "monitor": "val_accuracy", "mode": "max"},
    })
    again = build_config(tomllib.loads(cfg.to_toml()))
    assert again == cfg
    assert again.run.name == "t-mlp"


def test_to_toml_round_trips_strings_with_quotes_backslashes_and_newlines():
    awkward = 'dir\\with "quotes"\tand\nnewline é.csv'
    cfg = build_config({"run": {"name": "x"},
                        "data": {"source": "csv", "path": awkward, "target": 'the "label"\n'}})
    again = build_config(tomllib.loads(cfg.to_toml()))
    assert again.data.path == awkward
    assert again.data.target == 'the "label"\n'
