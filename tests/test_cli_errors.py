"""The real `traintop` command: bad configs and data exit 2 with one clear line, never a traceback."""

from __future__ import annotations

import gzip
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest


def traintop(*args: str, cwd=None) -> subprocess.CompletedProcess:
    """Run the installed command line in a fresh interpreter."""
    return subprocess.run([sys.executable, "-m", "traintop.tui", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def run_fails(tmp_path, config, *problem: str, quick: bool = True) -> str:
    """`traintop run CONFIG` must exit 2 with an error naming each of `problem`, no traceback.

    `quick` adds --set train.epochs=1, so that a run which wrongly starts ends soon.
    """
    quick_args = ["--set", "train.epochs=1"] if quick else []
    result = traintop("run", str(config), "--runs-dir", str(tmp_path / "runs"), *quick_args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.startswith("traintop: error: ")
    for word in problem:
        assert word in result.stderr
    return result.stderr


def csv_config(write_config, path, target="label", extra="") -> str:
    return write_config(f'[data]\nsource = "csv"\npath = "{path}"\ntarget = "{target}"\n{extra}')


@pytest.fixture
def table(write_csv):
    rng = np.random.default_rng(0)
    return write_csv(pd.DataFrame({
        "x": rng.normal(size=60), "colour": rng.choice(["red", "blue"], 60),
        "label": rng.choice(["yes", "no"], 60)}), "people.csv")


def test_missing_csv_file_is_named(tmp_path, write_config):
    run_fails(tmp_path, csv_config(write_config, "nowhere.csv"), "nowhere.csv", "does not exist")


def test_unknown_target_column_is_named(tmp_path, write_config, table):
    run_fails(tmp_path, csv_config(write_config, table.name, target="outcome"), "'outcome'", "colour")


def test_empty_csv_file_is_called_empty(tmp_path, write_config):
    (tmp_path / "empty.csv").write_text("")
    run_fails(tmp_path, csv_config(write_config, "empty.csv"), "empty.csv", "empty")


def test_header_only_csv_says_it_has_no_rows(tmp_path, write_config):
    (tmp_path / "header.csv").write_text("x,label\n")
    run_fails(tmp_path, csv_config(write_config, "header.csv"), "header.csv", "no rows")


def test_regression_on_a_text_target_explains_what_to_set(tmp_path, write_config, table):
    config = csv_config(write_config, table.name, extra='task = "regression"\n')
    run_fails(tmp_path, config, "'label'", "not numeric", "classification")


def test_unknown_config_key_suggests_the_close_one(tmp_path, write_config):
    config = write_config("[train]\nepoch = 3\n")
    run_fails(tmp_path, config, str(config), "train.epoch", 'did you mean "epochs"')


def test_wrong_type_names_the_key_and_the_file(tmp_path, write_config):
    config = write_config('[train]\nepochs = "ten"\n')
    # no --set train.epochs here: it would replace the bad value
    run_fails(tmp_path, config, str(config), "train.epochs", "integer", "'ten'", quick=False)


def test_missing_config_file_is_named(tmp_path):
    run_fails(tmp_path, tmp_path / "nope.toml", "nope.toml", "does not exist")


def test_check_prints_the_resolved_config_and_a_data_summary(tmp_path, write_config, table):
    config = csv_config(write_config, table.name)
    result = traintop("check", str(config), "--set", "train.epochs=1")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert 'name = "people-mlp"' in out  # the resolved config
    assert re.search(r"^task\s+classification", out, re.M)
    assert re.search(r"^rows\s+42 train / 9 val / 9 test", out, re.M)
    assert re.search(r"^classes\s+2", out, re.M)


def test_ls_on_an_empty_runs_dir_says_no_runs(tmp_path):
    result = traintop("ls", "--runs-dir", str(tmp_path / "empty"))
    assert result.returncode == 0, result.stderr
    assert "no runs" in result.stdout


def test_a_bad_run_name_on_the_command_line_is_refused_like_one_in_the_config(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "traintop.tui", "run", "--headless", "--name", "a/b",
                           "--runs-dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "run.name" in proc.stderr and "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir())


def test_a_config_error_under_a_name_given_on_the_command_line_names_the_flag_the_user_typed(tmp_path):
    (tmp_path / "c.toml").write_text('[model]\nkind = "python"\n')
    result = traintop("run", str(tmp_path / "c.toml"), "--headless", "--name", "mine", "--runs-dir", str(tmp_path))
    assert result.returncode == 2 and "model.factory is empty" in result.stderr
    assert "c.toml with --name 'mine'" in result.stderr and "--set" not in result.stderr, result.stderr


# -- the file system, checked before any data is loaded ---------------------------------------------

@pytest.fixture
def unwritable(tmp_path):
    """A folder nobody can create anything in, root included: a read-only tmpfs where this machine
    lets us mount one, else /proc (whose top level takes no new folders)."""
    import os

    mount = tmp_path / "read-only"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "traintop-test", str(mount)],
                          capture_output=True) if os.geteuid() == 0 else None
    if made is not None and made.returncode == 0:
        yield mount
        subprocess.run(["umount", str(mount)], capture_output=True)
    else:
        yield Path("/proc")


def run_in(runs_dir, *args) -> subprocess.CompletedProcess:
    return traintop("run", "--headless", "--runs-dir", str(runs_dir), "--set", "train.epochs=1", *args)


def refused_before_loading(result, *words):
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and result.stderr.startswith("traintop: error: ")
    for word in words:
        assert word in result.stderr
    assert "task" not in result.stdout  # no data summary, no run: nothing was loaded


def test_a_runs_dir_that_is_a_file_is_refused_naming_it(tmp_path):
    runs = tmp_path / "runs"
    runs.write_text("not a folder")
    refused_before_loading(run_in(runs), str(runs), "is a file")
    refused_before_loading(traintop("run", "--detach", "--runs-dir", str(runs)), str(runs), "is a file")
    for command in (["ls"], ["show", "latest"], ["attach", "latest"], ["export", "latest"]):  # not "no runs"
        listed = traintop(*command, "--runs-dir", str(runs))
        assert listed.returncode == 2 and f"--runs-dir {runs} is a file, not a folder" in listed.stderr


def test_a_runs_dir_under_a_file_is_refused_naming_the_file(tmp_path):
    (tmp_path / "notes.txt").write_text("")
    runs = tmp_path / "notes.txt" / "deeper" / "runs"
    refused_before_loading(run_in(runs), str(runs), f"lies under {tmp_path / 'notes.txt'}")


def test_a_runs_dir_that_cannot_be_written_is_refused_even_for_root(unwritable):
    runs = unwritable / "traintop-runs"
    refused_before_loading(run_in(runs), str(runs), "cannot be written")
    assert not runs.exists()


def test_a_run_name_too_long_for_the_file_system_is_refused_with_the_longest_allowed(tmp_path):
    result = run_in(tmp_path / "runs", "--name", "n" * 240)
    refused_before_loading(result, "240 bytes", "255 bytes per name", "at most 235 bytes")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    ok = run_in(tmp_path / "runs", "--name", "n" * 235)
    assert ok.returncode == 0, ok.stderr
    assert len(next((tmp_path / "runs").iterdir()).name) == 16 + 235


# -- bad data, named as data ------------------------------------------------------------------------

def test_infinite_values_in_a_csv_are_named_as_data_not_as_a_learning_rate_problem(tmp_path, write_config):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=60), "label": rng.choice(["yes", "no"], 60)})
    frame.loc[33, "x"] = np.inf
    frame.to_csv(tmp_path / "inf.csv", index=False)
    stderr = run_fails(tmp_path, csv_config(write_config, "inf.csv"), "inf.csv", "column 'x'", "line 35")
    assert "optim.lr" not in stderr and "non-finite loss" not in stderr


def test_check_lists_every_column_with_its_type_missing_count_and_encoding(tmp_path, write_config):
    rng = np.random.default_rng(0)
    n = 120
    frame = pd.DataFrame({
        "order_id": [f"A-{i:06d}" for i in range(n)],
        "weight": np.where(rng.random(n) < 0.1, np.nan, rng.normal(size=n)),
        "colour": rng.choice(["red", "green", "blue"], n),
        "label": rng.choice(["yes", "no"], n)})
    frame.to_csv(tmp_path / "orders.csv", index=False)
    result = traintop("check", str(csv_config(write_config, "orders.csv")))
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:]
            if line.startswith("            ") and len(line.split()) >= 4}
    missing = int(frame["weight"].isna().sum())
    assert re.search(rf"weight\s+numeric\s+{missing}\s+scaled", rows["weight"])
    assert re.search(r"colour\s+categorical\s+0\s+one-hot, 3 categories", rows["colour"])
    assert re.search(r"order_id\s+left out\s+0\s+left out: ID-like, 120 distinct of 120", rows["order_id"])
    assert re.search(r"label\s+target\s+0\s+2 classes", rows["label"])
    assert "warning     [data] column 'order_id' looks like an ID" in result.stdout
    assert re.search(r"^features\s+2 \(1 numeric, 1 categorical\) -> 4 inputs", result.stdout, re.M)


def test_a_model_too_large_for_the_built_in_kinds_is_refused_before_it_is_allocated(tmp_path):
    import time

    started = time.monotonic()
    result = traintop("run", "--headless", "--runs-dir", str(tmp_path / "runs"), "--set", "train.epochs=1",
                      "--set", "model.hidden=[65536, 65536]")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "model.hidden = [65536, 65536]" in result.stderr and "4,299," in result.stderr  # 4.3 billion
    assert "parameters" in result.stderr and not (tmp_path / "runs").exists()
    assert time.monotonic() - started < 60  # nothing of 17 GB was built


@pytest.mark.parametrize("command", [["ctl", "", "stop"], ["show", " "], ["export", ""], ["resume", ""]])
def test_an_empty_run_name_is_refused_and_picks_no_run(tmp_path, command):
    """It is a prefix of every run id: with one run it would have picked that one."""
    runs = tmp_path / "runs"
    (runs / "20261204-120000-only").mkdir(parents=True)
    (runs / "20261204-120000-only" / "meta.json").write_text('{"name": "only"}')
    result = traintop(*command, "--runs-dir", str(runs))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "an empty run name would match every run" in result.stderr


@pytest.mark.parametrize("value, why", [("\uff12", "expected a number"), ("1_0", "expected a number"),
                                        ("x\uff11", "expected a number"), ("9" * 500, "too large to read"),
                                        ("x1e400", "too large to read"), ("x0", "the factor must be a number above 0"),
                                        ("x-1", "the factor must be a number above 0"),
                                        ("*nan", "the factor must be a number above 0")])
def test_ctl_lr_reads_only_plain_numbers_and_names_one_too_large(tmp_path, value, why):
    """As predict and the CSV reader do: no full-width digits or 1_000 (Python's float takes them),
    and digits past a float's range are named, not turned into inf; refused before any run is asked."""
    result = traintop("ctl", "some-run", "lr", value, "--runs-dir", str(tmp_path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"ctl lr '{value[:30]}" in result.stderr and why in result.stderr


def test_a_refused_rate_is_never_shown_rounded_onto_the_allowed_bound():
    """10.0000001 refused as "10" would read as a contradiction (10 is allowed)."""
    import torch

    from traintop.engine import commands as cmd
    from traintop.engine.errors import UserError
    from traintop.engine.lrscale import LrScale

    scale = LrScale(torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1))
    for asked, shown in ((cmd.SetLr(value=10.0000001), "learning rate 10.0000001 refused"),
                         (cmd.SetLr(value=12.5), "learning rate 12.5 refused"),
                         (cmd.SetLr(factor=100.00001), "(which gives 10.000001000000001) refused")):
        with pytest.raises(UserError) as refused:
            scale.check(asked)
        assert shown in str(refused.value), str(refused.value)


def test_the_dashboards_prompts_read_numbers_as_ctl_does():
    from traintop.tui.screens import LrScreen, RangeScreen

    from traintop.engine import commands as cmd

    assert LrScreen(0.1).parse("\uff12")[1].startswith("'\uff12' is not a positive number")
    assert LrScreen(0.1).parse("1_0")[0] is None and LrScreen(0.1).parse("0.01") == (cmd.SetLr(value=0.01), "")
    assert LrScreen(0.1).parse(" X2 ") == (cmd.SetLr(factor=2.0), "")  # a factor, as ctl lr takes one
    assert LrScreen(0.1).parse("1e400") == (None, "'1e400' is too large to read; a rate goes up to 10")
    assert LrScreen(0.1).parse("x0")[0] is None
    assert RangeScreen(100).parse("1_0-50")[0] is None and RangeScreen(100).parse("10-50") == ((10.0, 50.0), "")
    assert RangeScreen(100).parse("0-99999999999") == ((0.0, 100.0), "")  # no further than the run has gone
    assert RangeScreen(100).parse("500-900") == (None, "'500-900': the run has 100 steps so far; start below that")


def test_an_extra_argument_is_refused_with_the_usage_of_the_command_it_was_given_to(tmp_path):
    result = traintop("ctl", "some-run", "lr", "1", "2", "--runs-dir", str(tmp_path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("usage: traintop ctl ") and "unrecognized arguments: 2" in result.stderr


@pytest.mark.parametrize("flags, why", [
    (["--nproc-per-node", "99999999999999999999"], "--nproc-per-node 99999999999999999999: allowed 1 to 1024"),
    (["--nproc-per-node", "1", "--nnodes", "5000", "--node-rank", "0", "--rdzv-endpoint", "h:1"],
     "--nnodes 5000: allowed 1 to 1024"),
])
def test_a_launch_far_past_any_machine_is_refused_before_anything_starts(tmp_path, flags, why):
    """Not a launcher growing without end until the machine runs out of memory."""
    result = subprocess.run([sys.executable, "-m", "traintop.tui", "run", "--headless", *flags, "--runs-dir",
                             str(tmp_path / "runs")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert why in result.stderr and not (tmp_path / "runs").exists()


def test_output_to_a_full_disk_is_one_line_and_exit_1_not_a_traceback(tmp_path):
    runs = tmp_path / "runs"
    (runs / "20261204-120000-only").mkdir(parents=True)
    (runs / "20261204-120000-only" / "meta.json").write_text('{"name": "only"}')
    (runs / "20261204-120000-only" / "events.jsonl").write_text("")
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "traintop.tui", "ls", "--runs-dir", str(runs)], stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr
    assert proc.stderr == "traintop: error: the output could not be written: No space left on device\n"


@pytest.mark.parametrize("name", ["..", "-rf", "_x"])
def test_a_run_name_that_does_not_start_with_a_letter_or_digit_is_refused_saying_so(tmp_path, name):
    result = traintop("run", "--headless", f"--name={name}", "--runs-dir", str(tmp_path / "runs"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"is {name!r}" in result.stderr and "starting with a letter or digit" in result.stderr


@pytest.mark.parametrize("args, why", [
    (["--lr-max", "1e300"], "1e-10 <= lr_min < lr_max <= 10"),
    (["--lr-min", "1e-300"], "1e-10 <= lr_min < lr_max <= 10"),
    (["SCRIPT"], "lr-find trains a config; in a script of your own, `lr = run.lr_find(step)`"),
])
def test_lr_find_refuses_a_range_no_run_trains_at_and_a_script(tmp_path, args, why):
    if args == ["SCRIPT"]:
        (tmp_path / "train.py").write_text("print('training')\n")
        args = [str(tmp_path / "train.py")]
    result = traintop("lr-find", *args, "--headless", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr and why in result.stderr, result.stderr


def test_a_config_with_a_byte_order_mark_is_read_and_a_semicolon_csv_is_named_as_such(tmp_path):
    """Editors on Windows start a file with a BOM; spreadsheets in many countries write ';'."""
    (tmp_path / "semi.csv").write_text("a;b;y\n1;2;0\n3;4;1\n")
    (tmp_path / "bom.toml").write_bytes(b'\xef\xbb\xbf[data]\nsource = "csv"\npath = "semi.csv"\ntarget = "y"\n')
    result = traintop("check", str(tmp_path / "bom.toml"))
    assert result.returncode == 2 and "Traceback" not in result.stderr and "TOML" not in result.stderr
    assert "are its fields separated by ';'?" in result.stderr


@pytest.mark.parametrize("name, content, why", [
    ("latin1.csv", "name,x,y\ntea,1,0\ncafé,2,1\n".encode("latin-1"),
     "latin1.csv is not UTF-8 text: line 3 holds the byte 0xe9 ('é' in Latin-1 or Windows-1252); save it as UTF-8"),
    ("excel.csv", "name,x,y\ntea,1,0\n".encode("utf-16"), "excel.csv is UTF-16 text; save it as UTF-8"),
    ("packed.csv.gz", gzip.compress(("x,y\n" + "1,0\n" * 5000 + "\xff,1\n").encode("latin-1"), mtime=0),
     "line 5002 holds the byte 0xff"),
    ("ends.csv", "x,y\n1,0\n2,café".encode("latin-1"), "ends.csv is not UTF-8 text: line 3 holds the byte 0xe9"),
    ("excel1252.csv", "x,y\n1,0\n2,\u201cyes\u201d\n".encode("cp1252"),
     "line 3 holds the byte 0x93 ('\u201c' in Windows-1252); save it as UTF-8 (e.g. iconv -f cp1252 -t utf-8"),
    ("shapes.csv", (Path(__file__).parent.parent / "sample_configs/shapes/circle/0000.png").read_bytes(),
     "shapes.csv is not a text file (it is a PNG image); give a CSV file: comma-separated text"),
    ("sheet.xlsx", b"PK\x03\x04\x14\x00\x06\x00\x08\x00\x00\x00!\x00" + bytes(range(256)) * 4,
     "sheet.xlsx is not a text file (it is a zip archive, as .xlsx spreadsheets are: export the sheet as CSV)"),
], ids=["latin-1", "utf-16", "gzip", "last-byte", "windows-1252", "png", "xlsx"])
def test_a_csv_that_is_not_utf8_names_the_line_and_byte_and_how_to_convert_it(tmp_path, name, content, why):
    (tmp_path / name).write_bytes(content)
    (tmp_path / "c.toml").write_text(f'[data]\nsource = "csv"\npath = "{name}"\ntarget = "y"\n')
    result = traintop("check", str(tmp_path / "c.toml"))
    assert result.returncode == 2 and "Traceback" not in result.stderr and why in result.stderr, result.stderr


@pytest.mark.parametrize("table, why", [
    ('a,"b\nx",y\n1,2,p\n3,4,q\n5,6,q\n', "has a column name with a line break in it ('b\\nx')"),
    ('a,b,y\n1,2,"p\nq"\n3,4,r\n5,6,r\n1,2,p\n', "holds a class with a line break in it ('p\\nq' at line 2)"),
])
def test_a_column_or_class_name_with_a_line_break_is_refused_before_it_breaks_a_log_line(tmp_path, table, why):
    (tmp_path / "table.csv").write_text(table)
    (tmp_path / "c.toml").write_text('[data]\nsource = "csv"\npath = "table.csv"\ntarget = "y"\n')
    result = traintop("check", str(tmp_path / "c.toml"))
    assert result.returncode == 2 and "Traceback" not in result.stderr and why in result.stderr, result.stderr
