"""Random configs and random CSVs: every one is accepted or refused with a clear message.

Whatever a user writes, traintop answers with exit 0, 1 or 2, never a traceback, never a hang.
One generator makes the configs and tables: hypothesis drives it for the properties checked in
this process, and fixed seeds drive it for the batch that goes through the real command line.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from traintop.engine.config import CHOICES, _section_types, _toml_value, build_config, load_config
from traintop.engine.data import load_data
from traintop.engine.errors import UserError

TRAINTOP = [sys.executable, "-m", "traintop.tui"]
SECTIONS = _section_types()
FUZZ = settings(max_examples=400, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])

# -- the generator ------------------------------------------------------------------------------------

WORDS = ["", "auto", "min", "max", "csv", "digits", "iris", "moons", "mlp", "cnn", "linear", "text", "adam",
         "sgd", "cosine", "plateau", "val_accuracy", "val_loss", "val_r2", "classification", "regression",
         "cpu", "cuda:7", "é ü ñ 漢字", "\u202etxt.exe", "\x1b[31mred", "[/]", "a" * 300, "../../x", "x:y",
         "NaN", "inf", "1e400", "  ", "label", "x", "0"]
INTS = [0, 1, -1, 2, 3, 7, 64, 2 ** 31, 2 ** 32, 2 ** 63, 10 ** 400, -(10 ** 30)]
FLOATS = [0.0, -0.0, 0.5, 1.0, 1e-3, 0.7, 10.0, -1.0, 1e300, -1e300, 5e-324, math.nan, math.inf, -math.inf]


def any_value(rng: random.Random, depth: int = 0):
    """A value of any TOML type: numbers at their edges, odd text, lists, nested tables."""
    kind = rng.choice(["int", "float", "bool", "str", "list", "table"] if depth < 3 else ["int", "float", "str"])
    if kind == "int":
        return rng.choice(INTS + [rng.randint(-10 ** 6, 10 ** 6)])
    if kind == "float":
        return rng.choice(FLOATS + [rng.uniform(-10, 10)])
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "str":
        return rng.choice(WORDS + ["".join(chr(rng.randint(32, 0x2FFF)) for _ in range(rng.randint(1, 12)))])
    if kind == "list":
        return [any_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rng.choice(["a", "lr", "é", "x y"]): any_value(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def value_for(rng: random.Random, section: str, key: str, t, columns: list[str]):
    """Mostly a value of the key's own type (so validation goes deeper), sometimes anything."""
    if rng.random() < 0.2:
        return any_value(rng)
    if (section, key) in CHOICES and rng.random() < 0.7:
        return rng.choice(CHOICES[(section, key)])
    if t is bool:
        return rng.random() < 0.5
    if t is int:
        return rng.choice(INTS[:8] + [rng.randint(0, 100)] * 4)
    if t is float:
        return rng.choice(FLOATS + [rng.uniform(0, 1)] * 6)
    if t == list[float]:
        return rng.choice([[0.7, 0.15, 0.15], [0.5, 0.5, 0.0], [0.8, 0.2], [math.nan, 0.5, 0.5],
                           [1.0, 0.0, 0.0], [0.6, 0.2, 0.2, 0.0]])
    if t == list[int]:
        return [rng.choice([1, 4, 8, 64, 0, -3, 65536, 2 ** 40]) for _ in range(rng.randint(0, 3))]
    if t == list[str]:
        return rng.sample(columns, rng.randint(0, len(columns))) if columns and rng.random() < 0.8 else \
            [any_value(rng) for _ in range(rng.randint(0, 2))]
    return rng.choice(WORDS + columns)


def random_sections(rng: random.Random, csv_path: str | None, columns: list[str]) -> dict:
    """Raw config sections: real sections and keys mostly, an unknown one now and then."""
    raw: dict = {}
    if csv_path is not None and rng.random() < 0.85:
        raw["data"] = {"source": "csv", "path": csv_path,
                       "target": rng.choice(columns) if columns else "label"}
    else:
        raw["data"] = {"source": rng.choice(["iris", "moons", "wine", "diabetes", "digits"])}
    for _ in range(rng.choice([0, 0, 1, 1, 2, 3, 8])):  # mostly a few keys, so data loading is reached
        section = rng.choice(list(SECTIONS)) if rng.random() < 0.97 else "trian"
        keys = SECTIONS.get(section, {"epochs": int})
        key = rng.choice(list(keys)) if rng.random() < 0.97 else "unknown_key"
        raw.setdefault(section, {})[key] = value_for(rng, section, key, keys.get(key, int), columns)
    if rng.random() < 0.03:
        raw["model"] = any_value(rng)  # a section that is not a table
    # never import real code, never reach the network, never train for long
    for section, key in (("data", "factory"), ("model", "factory")):
        if isinstance(raw.get(section), dict) and key in raw[section]:
            raw[section][key] = "traintop_fuzz_absent_module:f"
    if isinstance(raw.get("data"), dict):
        raw["data"]["download"] = False
    return raw


def toml_text(raw: dict) -> str:
    """TOML for any raw sections, nested tables as inline tables, non-finite floats as TOML spells them."""
    def value(v) -> str:
        if isinstance(v, float) and not math.isfinite(v):
            return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
        if isinstance(v, dict):
            return "{" + ", ".join(f"{json.dumps(k)} = {value(x)}" for k, x in v.items()) + "}"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return _toml_value(v)

    lines = []
    for section, values in raw.items():
        if isinstance(values, dict):
            lines.append(f"[{section}]")
            lines += [f"{json.dumps(k)} = {value(v)}" for k, v in values.items()]
        else:
            lines.insert(0, f"{section} = {value(values)}")
    return "\n".join(lines) + "\n"


def random_cell(rng: random.Random, kind: str):
    if rng.random() < 0.08:
        return rng.choice(["", "NA", "nan", " "])
    if kind == "number":
        if rng.random() < 0.02:
            return rng.choice(["inf", "-inf", "1e400", "1e300", "-1e308", "abc", str(10 ** 30), "0x1F", "1_000"])
        return f"{rng.gauss(0, 3):.4g}"
    if kind == "int":
        return str(rng.randint(0, 4)) if rng.random() < 0.95 else str(10 ** 25)
    if kind == "bool":
        return rng.choice(["true", "false", "True", "FALSE"])
    if kind == "id":
        return f"id-{rng.getrandbits(40):x}"
    return rng.choice(["red", "green", "blue", "é", "漢字", "\x1b[31m", "a,b", 'say "hi"', "multi\nline",
                       "the quick brown fox", "[/]"])


def random_csv(rng: random.Random) -> tuple[str, list[str]]:
    """CSV text with random columns, types and gaps; now and then empty, duplicated or ragged."""
    shape = rng.random()
    if shape < 0.04:
        return "", []
    names = [rng.choice(["x", "y", "label", "colour", "id", "é", "漢字", "a b", "", "\x1b]0;t\x07", "1", "x"])
             for _ in range(rng.randint(1, 6))]
    if rng.random() < 0.7:  # mostly distinct names, so the loading goes past the header
        names = list(dict.fromkeys(names)) or ["x"]
    kinds = [rng.choice(["number", "number", "int", "word", "bool", "id"]) for _ in names]
    n = rng.choice([0, 1, 3, 12, 40, 40, 80, 80])
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(names)
    ragged = rng.random() < 0.05
    for _ in range(n):
        row = [random_cell(rng, k) for k in kinds]
        if ragged and rng.random() < 0.1:
            row = row[:-1] + ["extra", "cells"]
        writer.writerow(row)
    text = out.getvalue()
    if shape > 0.97:
        text = text[: rng.randint(0, len(text))]  # cut anywhere
    return text, [h for h in names if h]


def write_case(rng: random.Random, folder: Path) -> Path:
    """A random CSV and a random config naming it, written into `folder`; the config's path."""
    folder.mkdir(parents=True, exist_ok=True)
    text, columns = random_csv(rng)
    (folder / "table.csv").write_text(text, encoding="utf-8")
    raw = random_sections(rng, "table.csv", columns)
    config = folder / "config.toml"
    config.write_text(toml_text(raw) if rng.random() < 0.97 else "[data\nsource = ", encoding="utf-8")
    return config


# -- in this process: the rule itself, many examples --------------------------------------------------

@FUZZ
@given(st.randoms(use_true_random=False))
def test_a_random_config_is_either_refused_clearly_or_resolved_to_one_that_reads_back_the_same(rng):
    raw = random_sections(rng, "table.csv", ["x", "label"])
    try:
        cfg = build_config(raw, "fuzz.toml")
    except UserError as e:
        assert str(e).startswith("fuzz.toml") or "data." in str(e)
        return
    again = build_config(tomllib.loads(cfg.to_toml()), "again.toml")
    assert again == cfg  # every number finite and in range: the written config is valid
    for section, values in cfg.to_dict().items():
        for key, v in values.items():
            for x in (v if isinstance(v, list) else [v]):
                if isinstance(x, float):
                    assert math.isfinite(x), (section, key, x)


@FUZZ
@given(st.randoms(use_true_random=False), st.text(max_size=40))
def test_any_set_value_is_either_taken_or_refused_clearly(rng, text):
    key = rng.choice([f"{s}.{k}" for s, keys in SECTIONS.items() for k in keys] + ["train", "a.b.c", ".x"])
    try:
        load_config(None, [f"{key}={text}"])
    except UserError:
        pass


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=False))
def test_a_random_csv_loads_to_finite_inputs_or_is_refused_clearly(rng):
    with tempfile.TemporaryDirectory() as tmp:
        text, columns = random_csv(rng)
        path = Path(tmp) / "t.csv"
        path.write_text(text, encoding="utf-8")
        data_keys = {"source": "csv", "path": str(path), "target": rng.choice(columns or ["label"]),
                     "task": rng.choice(["auto", "auto", "classification", "regression"])}
        if columns and rng.random() < 0.3:
            data_keys["features"] = rng.sample(columns, rng.randint(1, len(columns)))
        if columns and rng.random() < 0.15:
            data_keys["text"] = rng.choice(columns)
        try:
            data = load_data(build_config({"data": data_keys}))
        except UserError:
            return
        for split in ("train", "val", "test"):
            x, y = data.x[split], data.y[split]
            assert len(x) == len(y) == len(data.raw[split])
            assert x.dtype.kind == "f" and (x == x).all() and abs(x).max(initial=0) < math.inf
        assert len(data.y["train"]) and len(data.y["val"])


# -- through the real command line --------------------------------------------------------------------

DRIVER = r"""
import contextlib, io, json, signal, sys, traceback

class Hang(BaseException):
    pass

def on_alarm(sig, frame):
    raise Hang()

signal.signal(signal.SIGALRM, on_alarm)
from traintop.tui.cli import main

results = []
for args in json.load(sys.stdin):
    err = io.StringIO()
    signal.alarm(30)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            main(args)
        code = "returned"
    except SystemExit as e:
        code = e.code
    except Hang:
        code = "hang"
    except BaseException:
        err.write(traceback.format_exc())
        code = "crash"
    finally:
        signal.alarm(0)
    results.append({"args": args, "code": code, "stderr": err.getvalue()[-4000:]})
json.dump(results, sys.__stdout__)
"""

CLI_CASES = 60


def test_random_configs_and_csvs_through_traintop_check_exit_0_or_2_without_a_traceback(tmp_path):
    cases = []
    for seed in range(CLI_CASES):
        config = write_case(random.Random(seed), tmp_path / f"case{seed}")
        cases.append(["check", str(config)])
    # one interpreter for the batch: torch is imported once, not forty times
    proc = subprocess.run([sys.executable, "-c", DRIVER], input=json.dumps(cases), capture_output=True,
                          text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(proc.stdout)
    assert len(results) == CLI_CASES
    bad = [r for r in results if r["code"] not in (0, 1, 2) or "Traceback" in r["stderr"]]
    assert not bad, json.dumps(bad[:3], indent=1)
    codes = [r["code"] for r in results]
    assert codes.count(0) >= 3 and codes.count(2) >= 10  # both ways were taken


# cases of the generator that `check` accepts, and one it refuses: runs that really train, and one that does not
RUN_SEEDS = [1000, 1001, 1005, 1008]


def test_random_cases_run_headless_in_their_own_processes_exit_0_1_or_2_without_a_traceback(tmp_path):
    codes = []
    for seed in RUN_SEEDS:
        config = write_case(random.Random(seed), tmp_path / f"case{seed}")
        args = ["run", str(config), "--headless", "--runs-dir", str(tmp_path / "runs"), "--set", "train.epochs=1",
                "--set", "checkpoint.every_seconds=0"]
        proc = subprocess.run([*TRAINTOP, *args], capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert proc.returncode in (0, 1, 2), proc.stderr[-4000:]
        assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
        codes.append(proc.returncode)
    assert codes.count(0) >= 2, codes  # the generator still makes data that trains


@pytest.fixture(scope="module")
def fitted():
    """The preprocessing fitted on a small mixed table: numbers with gaps, words, small integers."""
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.csv"
        rows = [f"{rng.gauss(5, 2):.3f},{rng.choice(['red', 'green'])},{rng.randint(1, 3)},{rng.choice('ab')}"
                for _ in range(60)]
        path.write_text("size,colour,rooms,label\n" + "\n".join(rows) + "\n")
        return load_data(build_config({"data": {"source": "csv", "path": str(path), "target": "label"}})).preprocess


@FUZZ
@given(st.randoms(use_true_random=False))
def test_a_random_raw_record_becomes_a_finite_input_or_is_refused_naming_its_column(fitted, rng):
    import pandas as pd

    record = {name: any_value(rng) if rng.random() < 0.5 else rng.choice(["", None, "4.5", 3, "red", "nan"])
              for name in ("size", "colour", "rooms") if rng.random() < 0.95}
    try:
        x = fitted.transform(pd.DataFrame([record]))
    except UserError as e:
        assert "column" in str(e)
        return
    assert x.shape == (1, len(fitted.output_names)) and (abs(x) < math.inf).all()
