"""The config: defaults, `--set` overrides, and the errors a user sees for a bad key or value."""

from __future__ import annotations

import json
import re
import tomllib

import pytest

import math
import os
import subprocess
import sys
from pathlib import Path

from traintop.engine.config import (LR_RANGE, RANGES, _section_types, build_config, demo_config, load_config,
                                    parse_override)
from traintop.engine.errors import UserError

RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def error_of(*args, **kwargs) -> str:
    """The message of the UserError that load_config raises."""
    with pytest.raises(UserError) as e:
        load_config(*args, **kwargs)
    return str(e.value)


# -- defaults ---------------------------------------------------------------------------------------

def test_the_defaults_train_an_mlp_on_the_digits():
    cfg = load_config()
    assert cfg.data.source == "digits"
    assert cfg.model.kind == "mlp"
    assert cfg.model.hidden == [128, 128]
    assert cfg.optim.name == "adam" and cfg.optim.lr == 0.001
    assert cfg.train.epochs == 20
    assert cfg.data.split == [0.7, 0.15, 0.15]
    assert cfg.early_stopping.enabled and cfg.early_stopping.patience == 5
    assert cfg.run.name == "digits-mlp"


def test_an_empty_config_file_is_the_demo_and_a_config_that_names_a_key_starts_from_the_defaults(write_config):
    assert load_config(write_config("# says nothing\n")).to_dict() == demo_config().to_dict()
    assert load_config(write_config("")).optim.lr == 1e-5
    assert load_config(write_config("[run]\nname = 'x'\n")).optim.lr == load_config().optim.lr == 1e-3


def test_the_demo_is_the_defaults_made_to_last_half_a_minute_and_written_out_in_the_samples():
    demo, defaults = demo_config(), load_config()
    assert (demo.data.batch_size, demo.model.hidden, demo.optim.lr, demo.train.epochs) == (16, [512, 512], 1e-5, 300)
    changed = {(section, key) for section, keys in demo.to_dict().items() for key, value in keys.items()
               if defaults.to_dict()[section][key] != value}
    assert changed == {("data", "batch_size"), ("model", "hidden"), ("optim", "lr"), ("train", "epochs")}
    assert load_config(Path(__file__).parent.parent / "sample_configs" / "digits_mlp.toml") == demo
    assert demo_config(["train.epochs=2"]).train.epochs == 2  # --set still wins over the demo


def test_check_without_a_config_prints_the_demo_that_runs():
    result = subprocess.run([sys.executable, "-m", "traintop.tui", "check"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "batch_size = 16" in result.stdout and "lr = 1e-05" in result.stdout
    assert "plan        300 epochs × 79 steps" in result.stdout


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
    message = error_of(None, ["train.epochs=0"])
    assert "train.epochs is 0" in message and "allowed: an integer from 1 to" in message


def test_csv_source_needs_a_path_and_a_target():
    assert "data.path" in error_of(None, ["data.source=csv"])
    assert "data.target" in error_of(None, ["data.source=csv", "data.path=t.csv"])


@pytest.mark.parametrize("schedule", ["cosine", "onecycle", "plateau"])
def test_a_schedule_floor_above_the_rate_it_decays_from_is_refused(schedule):
    message = error_of(None, ["optim.lr=0.001", f"schedule.name={schedule}", "schedule.min_lr=1"])
    assert f"schedule.min_lr is 1, above optim.lr = 0.001: the {schedule} schedule decays" in message
    assert load_config(None, ["optim.lr=0.001", f"schedule.name={schedule}", "schedule.min_lr=0.001"])
    assert load_config(None, ["optim.lr=0.001", "schedule.name=step", "schedule.min_lr=1"])  # step has no floor


def test_a_warm_up_longer_than_the_run_is_a_config_warning(tmp_path):
    from traintop.engine import events as ev
    from traintop.engine.run import Run
    from traintop.engine.runstore import read_events

    run = Run.prepare(load_config(None, ["train.epochs=1", "schedule.warmup_steps=500", "data.batch_size=256"]),
                      tmp_path)
    try:
        run.train()
    finally:
        run.close()
    said = [e.message for e in read_events(run.folder.events)[0] if isinstance(e, ev.RunWarning) and e.kind == "config"]
    assert said == ["schedule.warmup_steps = 500 is longer than the whole run (5 steps): the rate never reaches "
                    "optim.lr; give fewer warm-up steps"]


@pytest.mark.parametrize("override, said", [
    ("model.hidden=[64,", "--set model.hidden: '[64,' is not a valid TOML value"),
    ('data.path="my data.csv', "--set data.path: '\"my data.csv' is not a valid TOML value"),
])
def test_a_set_value_meant_as_toml_that_does_not_parse_is_named_as_such(override, said):
    message = error_of(None, [override])
    assert message.startswith(said) and "--set model.hidden=[64,64]" in message


@pytest.mark.parametrize("key, given, meant", [("data.source", "CSV", "csv"), ("schedule.name", "Cosine", "cosine"),
                                               ("optim.name", "AdamW", "adamw"), ("data.source", "irls", "iris")])
def test_a_choice_in_another_letter_case_or_misspelt_is_pointed_to_the_right_one(key, given, meant):
    assert f'is {given!r} (did you mean "{meant}"?)' in error_of(None, [f"{key}={given}"])


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


# -- one numeric rule -------------------------------------------------------------------------------

NUMERIC = (int, float, list[int], list[float])


def test_every_numeric_key_of_every_section_has_a_range_of_its_own():
    numeric = {(section, key) for section, keys in _section_types().items()
               for key, t in keys.items() if t in NUMERIC}
    assert numeric == set(RANGES)


@pytest.mark.parametrize("override, key", [
    ("optim.lr=nan", "optim.lr"),
    ("optim.lr=inf", "optim.lr"),
    ("optim.lr=-inf", "optim.lr"),
    ("data.split=[nan, 0.5, 0.5]", "data.split"),
    ("data.split=[inf, 0.5, 0.5]", "data.split"),
    ("early_stopping.min_delta=nan", "early_stopping.min_delta"),
    ("early_stopping.min_delta=inf", "early_stopping.min_delta"),
    ("train.grad_clip=nan", "train.grad_clip"),
    ("optim.weight_decay=inf", "optim.weight_decay"),
    ("checkpoint.every_seconds=nan", "checkpoint.every_seconds"),
    ("schedule.min_lr=nan", "schedule.min_lr"),
    ("run.seed=4294967296", "run.seed"),
    ("run.seed=-1", "run.seed"),
    ("run.threads=100000", "run.threads"),
    ("model.hidden=[64, 1000000000000]", "model.hidden"),
    ("model.hidden=[0]", "model.hidden"),
    ("model.channels=[32, 100000]", "model.channels"),
    ("model.channels=[]", "model.channels"),
    ("data.batch_size=0", "data.batch_size"),
    ("data.batch_size=10000000000", "data.batch_size"),
    ("data.image_size=100000", "data.image_size"),
    ("data.memory_limit_mb=0", "data.memory_limit_mb"),
    ("data.max_vocab=100000000", "data.max_vocab"),
    ("train.epochs=100000000", "train.epochs"),
    ("model.dropout=1", "model.dropout"),
    ("model.dropout=-0.1", "model.dropout"),
    ("schedule.gamma=0", "schedule.gamma"),
    ("schedule.gamma=1.5", "schedule.gamma"),
    ("optim.momentum=1", "optim.momentum"),
    ("optim.lr=0", "optim.lr"),
    ("data.channels=2", "data.channels"),
])
def test_numbers_out_of_their_range_are_refused_naming_the_key_and_what_is_allowed(override, key):
    message = error_of(None, [override])
    assert f"{key} is " in message and "; allowed: " in message
    assert "--set " + override in message  # where the value came from


def test_nan_and_inf_literals_in_a_config_file_go_through_the_same_rule(write_config):
    path = write_config("[optim]\nlr = nan\n")
    message = error_of(path)
    assert str(path) in message and "optim.lr is nan; allowed: 0 < lr <= 10" in message
    path = write_config("[data]\nsplit = [0.7, inf, 0.15]\n", "split.toml")
    assert "data.split is [0.7, inf, 0.15]" in error_of(path)


def test_a_400_digit_integer_is_refused_by_its_range_not_an_overflow(write_config):
    huge = "1" + "0" * 400
    for key in ("optim.lr", "train.epochs", "data.split"):
        value = f"[{huge}, 0.5, 0.5]" if key == "data.split" else huge
        message = error_of(None, [f"{key}={value}"])
        assert f"{key} is " in message and "100000000000000000...0000" in message and "allowed: " in message
        assert len(message) < 400  # the value is cut short, not printed whole


def test_a_value_nested_too_deeply_to_read_is_an_error_not_a_crash(write_config):
    assert "nested too deeply" in error_of(None, ["model.hidden=" + "[" * 5000 + "]" * 5000])
    assert "nested too deeply" in error_of(write_config("[model]\nhidden = " + "[" * 5000 + "]" * 5000 + "\n"))


def test_the_learning_rate_range_is_the_one_a_live_change_uses():
    low, high = LR_RANGE
    assert load_config(None, [f"optim.lr={high}"]).optim.lr == high
    assert "allowed: 0 < lr <= 10" in error_of(None, [f"optim.lr={high * 1.0001}"])
    assert "optim.lr is 0.0" in error_of(None, [f"optim.lr={low}"])


@pytest.mark.parametrize("section, key", sorted(RANGES))
def test_the_bounds_of_every_range_are_themselves_allowed(section, key):
    rule = RANGES[(section, key)]
    if rule.items != (0, 0) or rule.only:  # lists and choices: covered above
        return
    integer = isinstance(getattr(load_config().__getattribute__(section), key), int)
    for bound, is_open in ((rule.low, rule.low_open), (rule.high, rule.high_open)):
        if is_open or math.isinf(bound):
            continue
        value = int(bound) if integer else float(bound)
        cfg = build_config({section: {key: value}})
        assert getattr(getattr(cfg, section), key) == value


def test_threads_may_use_up_to_four_per_core_of_this_machine():
    most = min(1024, 4 * (os.cpu_count() or 1))
    assert load_config(None, [f"run.threads={most}"]).run.threads == most
    assert f"to {most}" in error_of(None, [f"run.threads={most + 1}"])


def test_a_bad_number_on_the_command_line_exits_2_with_one_line_and_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "traintop.tui", "run", "--headless", "--runs-dir",
                             str(tmp_path / "runs"), "--set", "optim.lr=inf"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == ("traintop: error: the built-in demo config with --set optim.lr=inf: "
                                     "optim.lr is inf; allowed: 0 < lr <= 10")
    assert not (tmp_path / "runs").exists()


# -- early_stopping.mode ----------------------------------------------------------------------------

@pytest.mark.parametrize("monitor, mode", [
    ("val_loss", "min"), ("val_accuracy", "max"), ("val_r2", "max"), ("val_mae", "min"), ("val_rmse", "min"),
])
def test_mode_auto_means_what_the_monitor_means(monitor, mode):
    cfg = load_config(None, [f"early_stopping.monitor={monitor}"])
    assert cfg.early_stopping.mode == mode and not cfg.warnings
    assert f'mode = "{mode}"' in cfg.to_toml()  # the resolved config says which


def test_mode_auto_stays_readable_in_a_config_file(write_config):
    cfg = load_config(write_config('[early_stopping]\nmonitor = "val_accuracy"\nmode = "auto"\n'))
    assert cfg.early_stopping.mode == "max"
    again = build_config(tomllib.loads(cfg.to_toml()))
    assert again.early_stopping.mode == "max" and not again.warnings


def test_a_mode_against_its_monitor_is_kept_with_a_config_warning():
    cfg = load_config(None, ["early_stopping.monitor=val_accuracy", "early_stopping.mode=min"])
    assert cfg.early_stopping.mode == "min"
    [(kind, message)] = cfg.warnings
    assert kind == "config" and "val_accuracy" in message and 'mode = "max"' in message


def test_check_and_the_run_show_the_mode_warning(tmp_path):
    args = ["--set", "early_stopping.monitor=val_accuracy", "--set", "early_stopping.mode=min",
            "--set", "train.epochs=1"]
    check = subprocess.run([sys.executable, "-m", "traintop.tui", "check", *args],
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stderr
    assert "warning     [config] early_stopping.mode = \"min\" with monitor = \"val_accuracy\"" in check.stdout
    run = subprocess.run([sys.executable, "-m", "traintop.tui", "run", "--headless", "--runs-dir",
                          str(tmp_path / "runs"), *args], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    [folder] = (tmp_path / "runs").iterdir()
    events = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
    warnings = [e for e in events if e["event"] == "warning" and e["kind"] == "config"]
    assert len(warnings) == 1 and "val_accuracy" in warnings[0]["message"] and warnings[0]["step"] == 0
    assert 'mode = "min"' in (folder / "config.toml").read_text()


def test_check_refuses_a_run_name_that_run_would_refuse(tmp_path):
    """check says what run would: a name too long for a run id is refused by both, in the same words."""
    args = ["--set", f"run.name={'m' * 300}", "--set", "train.epochs=1"]
    env = {**os.environ, "TRAINTOP_RUNS_DIR": str(tmp_path / "runs")}
    check, run = (subprocess.run([sys.executable, "-m", "traintop.tui", *command, *args], capture_output=True,
                                 text=True, timeout=120, env=env) for command in (["check"], ["run", "--headless"]))
    for proc in (check, run):
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert "is 300 bytes long" in proc.stderr and "at most 235 bytes" in proc.stderr
    assert not (tmp_path / "runs").exists()
