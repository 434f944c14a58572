"""`traintop predict`: raw rows in, the saved model's answers out, the same as the engine gives."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from traintop.engine import commands as cmd
from traintop.engine.client import LiveRun
from traintop.engine.runstore import resolve_run

TRAINTOP = [sys.executable, "-m", "traintop.tui"]
PLANTS = Path(__file__).resolve().parent.parent / "sample_configs" / "plants_csv.toml"
PLANTS_CSV = PLANTS.with_name("plants.csv")
FEATURES = ["soil", "sunlight_hours", "water_ml", "fertilizer", "temperature_c"]


def traintop(*args, runs_dir) -> subprocess.CompletedProcess:
    return subprocess.run([*TRAINTOP, *args, "--runs-dir", str(runs_dir)], capture_output=True, text=True,
                          timeout=300)


def read_table(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished plants run (a CSV with gaps and categorical columns)."""
    runs = tmp_path_factory.mktemp("runs")
    proc = traintop("run", str(PLANTS), "--headless", "--set", "train.epochs=4", runs_dir=runs)
    assert proc.returncode == 0, proc.stderr
    return runs


async def test_predict_on_a_live_run_equals_the_engines_answers_for_the_same_rows(tmp_path, engines):
    runs = tmp_path / "runs"
    proc = traintop("run", str(PLANTS), "--detach", "--set", "train.epochs=5000",
                    "--set", "early_stopping.enabled=false", runs_dir=runs)
    assert proc.returncode == 0, proc.stderr
    folder = resolve_run(proc.stdout.split()[0], runs)
    engines.append(folder)
    rows = pd.read_csv(PLANTS_CSV)[FEATURES]  # the same rows in the same batch as the file
    records = [{k: (None if pd.isna(v) else v) for k, v in r.items()} for r in rows.to_dict("records")]
    live = await LiveRun.connect(folder)
    try:
        assert (await live.send(cmd.Pause())).ok
        assert (await live.send(cmd.Checkpoint())).ok  # last.pt now holds the paused weights
        reply = await live.send(cmd.Predict(request_id="p", inputs=records, weights="current"))
        assert reply.ok, reply.message
        engine = reply.data["outputs"]
        # while the run stays live and paused, predict from its saved last.pt
        out = await asyncio.to_thread(traintop, "predict", folder.run_id, str(PLANTS_CSV),
                                      "--checkpoint", "last", runs_dir=runs)
        assert out.returncode == 0, out.stderr
        assert (await live.send(cmd.Resume())).ok  # the run was not disturbed
        await live.send(cmd.Stop())
    finally:
        await live.close()
    table = read_table(out.stdout)
    assert [t["row"] for t in table] == [str(i) for i in range(len(rows))]
    assert [t["prediction"] for t in table] == [e["label"] for e in engine]
    # The same arithmetic on the CPU gives the same bits; an engine on a GPU agrees to float32 rounding.
    on_cpu = folder.read_json("meta.json")["device"] == "cpu"
    for t, e in zip(table, engine):
        probabilities = {c: float(t[f"p_{c}"]) for c in e["probabilities"]}
        assert probabilities == (e["probabilities"] if on_cpu else pytest.approx(e["probabilities"], abs=1e-6))


def test_unseen_categories_and_missing_values_predict_like_training_handled_them(finished, tmp_path):
    rows = pd.DataFrame({
        "soil": ["clay", "lava", None],                # an unseen category, a missing one
        "sunlight_hours": [6.0, None, 3.0],            # a missing number: the training median
        "water_ml": [250.0, 180.0, None],
        "fertilizer": ["yes", "no", "maybe"],
        "temperature_c": [22.0, 30.0, 18.0],
        "notes": ["extra", "columns", "ignored"],
    })
    path = tmp_path / "new.csv"
    rows.to_csv(path, index=False)
    out = tmp_path / "preds" / "out.csv"
    proc = traintop("predict", "latest", str(path), "--out", str(out), runs_dir=finished)
    assert proc.returncode == 0, proc.stderr
    assert "3 prediction(s)" in proc.stderr
    table = read_table(out.read_text())
    assert [t["row"] for t in table] == ["0", "1", "2"]
    for t in table:
        assert t["prediction"] in ("thrived", "wilted")
        p = [float(t["p_thrived"]), float(t["p_wilted"])]
        assert sum(p) == pytest.approx(1.0, abs=1e-6)
        assert t["prediction"] == ("thrived" if p[0] > p[1] else "wilted")


def test_a_csv_missing_a_feature_column_exits_2_naming_the_column(finished, tmp_path):
    path = tmp_path / "partial.csv"
    pd.read_csv(PLANTS_CSV).drop(columns=["water_ml"]).to_csv(path, index=False)
    proc = traintop("predict", "latest", str(path), runs_dir=finished)
    assert proc.returncode == 2
    assert "water_ml" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_a_semicolon_separated_input_is_told_traintop_reads_commas(finished, tmp_path):
    path = tmp_path / "semi.csv"
    pd.read_csv(PLANTS_CSV).to_csv(path, index=False, sep=";")
    proc = traintop("predict", "latest", str(path), runs_dir=finished)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "are its fields separated by ';'? traintop reads comma-separated files" in proc.stderr, proc.stderr


def test_bad_predict_arguments_exit_2_with_a_message(finished, tmp_path):
    missing = traintop("predict", "latest", str(tmp_path / "nope.csv"), runs_dir=finished)
    assert missing.returncode == 2 and "nope.csv" in missing.stderr and "does not exist" in missing.stderr
    folder = traintop("predict", "latest", str(tmp_path), runs_dir=finished)
    assert folder.returncode == 2 and "CSV" in folder.stderr
    run = resolve_run("latest", finished)
    (run.checkpoints / "best.pt").rename(run.checkpoints / "kept.pt")
    try:
        no_best = traintop("predict", "latest", str(PLANTS_CSV), runs_dir=finished)
        assert no_best.returncode == 2 and "--checkpoint last" in no_best.stderr
    finally:
        (run.checkpoints / "kept.pt").rename(run.checkpoints / "best.pt")


def test_regression_predictions_are_values_in_the_targets_units(tmp_path):
    runs = tmp_path / "runs"
    proc = traintop("run", "--headless", "--set", 'data.source="diabetes"', "--set", "train.epochs=3",
                    runs_dir=runs)
    assert proc.returncode == 0, proc.stderr
    import sklearn.datasets

    rows = sklearn.datasets.load_diabetes(as_frame=True).data.head(40)
    path = tmp_path / "patients.csv"
    rows.to_csv(path, index=False)
    out = traintop("predict", "latest", str(path), runs_dir=runs)
    assert out.returncode == 0, out.stderr
    table = read_table(out.stdout)
    assert list(table[0]) == ["row", "prediction"] and len(table) == 40
    values = [float(t["prediction"]) for t in table]
    assert 25 < sum(values) / len(values) < 350  # disease progression is 25..346, not standardized
    # values a float holds, but so far outside training that the model's answer overflows: refused
    far = rows.head(3).copy()
    far.iloc[1] = [1e37, 9e36, 1e37, -1e37, 9e36, -1e37, 9e36, -9e36, 1e37, 1e37]
    far.to_csv(path, index=False)
    refused = traintop("predict", "latest", str(path), runs_dir=runs)
    assert refused.returncode == 2 and refused.stdout == "" and "Traceback" not in refused.stderr
    assert f"input {path}, row 1 (line 3): the model's answer is not a finite number" in refused.stderr


async def test_a_finished_run_answers_predict_from_its_saved_weights(finished):
    from traintop.engine.client import FinishedRun
    from traintop.engine.predictor import Predictor

    run = FinishedRun(resolve_run("latest", finished))
    try:
        typed = {"soil": "loam", "sunlight_hours": 7.5, "water_ml": None, "fertilizer": "yes", "temperature_c": 20}
        reply = await run.send(cmd.Predict(request_id="f", weights="best",
                                           inputs=[{"split": "val", "index": 2}, typed]))
        assert reply.ok, reply.message
        sample, answer = reply.data["outputs"]
        assert sample["true"] in ("thrived", "wilted") and set(sample["input"]) == set(FEATURES)
        best = Predictor.from_folder(run.folder, "best")
        assert reply.data["step"] == best.step and reply.data["weights"] == "best"
        # the saved weights (loaded on the CPU) answer as the prediction process did, bit for bit
        assert best.predict([sample["input"], typed]) == [{k: sample[k] for k in ("label", "probabilities")}, answer]
        test = await run.send(cmd.Predict(request_id="t", inputs=[{"split": "test", "index": 0}]))
        assert test.ok  # the test has run, so its samples may be shown
        refused = await run.send(cmd.Pause())
        assert not refused.ok and "completed" in refused.message
    finally:
        await run.close()


async def test_a_finished_runs_answers_stay_in_step_after_a_request_is_given_up(finished):
    from traintop.engine.client import FinishedRun

    run = FinishedRun(resolve_run("latest", finished))
    try:
        given_up = asyncio.create_task(run.send(cmd.Predict(request_id="a", inputs=[{"split": "val", "index": 0}])))
        await asyncio.sleep(0.2)  # the prediction process is still starting
        given_up.cancel()
        fifth = await run.send(cmd.Predict(request_id="b", inputs=[{"split": "val", "index": 5}]))
        again = await run.send(cmd.Predict(request_id="c", inputs=[{"split": "val", "index": 5}]))
        first = await run.send(cmd.Predict(request_id="d", inputs=[{"split": "val", "index": 0}]))
        assert fifth.ok and fifth.data["outputs"] == again.data["outputs"]  # not sample 0's late answer
        assert first.data["outputs"][0]["input"] != fifth.data["outputs"][0]["input"]
    finally:
        await run.close()


def test_an_out_path_that_is_a_folder_or_under_a_file_is_refused_before_predicting(finished, tmp_path):
    folder = traintop("predict", "latest", str(PLANTS_CSV), "--out", str(tmp_path), runs_dir=finished)
    assert folder.returncode == 2 and "Traceback" not in folder.stderr
    assert f"--out {tmp_path} is a folder" in folder.stderr and folder.stdout == ""
    (tmp_path / "notes.txt").write_text("keep me")
    under = tmp_path / "notes.txt" / "preds.csv"
    result = traintop("predict", "latest", str(PLANTS_CSV), "--out", str(under), runs_dir=finished)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"lies under {tmp_path / 'notes.txt'}" in result.stderr
    export = traintop("export", "latest", "--out", str(tmp_path / "notes.txt"), runs_dir=finished)
    assert export.returncode == 2 and "is a file; give a folder" in export.stderr
    assert "Traceback" not in export.stderr
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    device = traintop("export", "latest", "--out", "/dev/null", runs_dir=finished)
    assert device.returncode == 2 and "/dev/null is not a folder (a device" in device.stderr


def test_out_writes_through_a_link_and_into_a_pipe_and_never_over_its_input(finished, tmp_path):
    """A link stays a link (its file gets the predictions), a fifo stays a fifo (its reader gets
    them), as with a shell's `>`; an --out that is the input is refused, the input kept."""
    import threading

    target = tmp_path / "target.csv"
    target.write_text("old\n")
    (tmp_path / "link.csv").symlink_to(target)
    proc = traintop("predict", "latest", str(PLANTS_CSV), "--out", str(tmp_path / "link.csv"), runs_dir=finished)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "link.csv").is_symlink() and target.read_text().startswith("row,prediction")

    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    read: list[str] = []
    reader = threading.Thread(target=lambda: read.append(fifo.read_text()), daemon=True)
    reader.start()
    proc = traintop("predict", "latest", str(PLANTS_CSV), "--out", str(fifo), runs_dir=finished)
    reader.join(60)
    assert proc.returncode == 0, proc.stderr
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and read and read[0].startswith("row,prediction")

    data = tmp_path / "mine.csv"
    data.write_bytes(PLANTS_CSV.read_bytes())
    same = traintop("predict", "latest", str(data), "--out", str(data), runs_dir=finished)
    assert same.returncode == 2 and "is the input" in same.stderr and "Traceback" not in same.stderr
    assert data.read_bytes() == PLANTS_CSV.read_bytes()


def test_a_row_with_one_field_more_than_the_header_is_refused_not_shifted(finished, tmp_path):
    path = tmp_path / "shifted.csv"
    path.write_text("soil,sunlight_hours,water_ml,fertilizer,temperature_c\nclay,5,200,3,yes,20\n")
    proc = traintop("predict", "latest", str(path), runs_dir=finished)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stdout == ""
    assert "has rows with more fields than its header names columns (5)" in proc.stderr


@pytest.mark.parametrize("edit, said", [
    (lambda d: d["columns"][0]["categories"].append("peat"), "it gives inputs of shape [9] where the run trained on [8]"),
    (lambda d: d["classes"].append("dormant"), "it names 3 classes where the run trained on 2"),
    (lambda d: d["classes"].reverse(), "it names its classes otherwise than the run trained on them ('wilted' "
                                       "for 'thrived', 'thrived' for 'wilted')"),
])
def test_a_preprocess_json_edited_after_the_run_is_named_not_the_checkpoint(finished, tmp_path, edit, said):
    run = next(finished.iterdir())
    copy = tmp_path / "runs" / run.name
    shutil.copytree(run, copy)
    fitted = json.loads((copy / "preprocess.json").read_text())
    edit(fitted)
    (copy / "preprocess.json").write_text(json.dumps(fitted))
    proc = traintop("predict", str(copy), str(PLANTS_CSV), runs_dir=tmp_path / "runs")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "best.pt" not in proc.stderr
    assert f"{copy / 'preprocess.json'} is damaged: {said}; it was changed after the run" in proc.stderr


def test_a_table_can_be_piped_into_predict_on_stdin_or_through_a_fifo_and_is_named_as_given(finished, tmp_path):
    import threading

    expected = traintop("predict", "latest", str(PLANTS_CSV), runs_dir=finished)
    assert expected.returncode == 0, expected.stderr
    piped = subprocess.run([*TRAINTOP, "predict", "latest", "-", "--runs-dir", str(finished)], capture_output=True,
                           text=True, timeout=300, input=PLANTS_CSV.read_text())
    assert piped.returncode == 0 and piped.stdout == expected.stdout, piped.stderr
    fifo = tmp_path / "rows"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(PLANTS_CSV.read_bytes()))
    writer.start()
    through = traintop("predict", "latest", str(fifo), runs_dir=finished)
    writer.join(timeout=60)
    assert through.returncode == 0 and through.stdout == expected.stdout, through.stderr
    wrong = subprocess.run([*TRAINTOP, "predict", "latest", "-", "--runs-dir", str(finished)], capture_output=True,
                           text=True, timeout=300, input="a,b\n1,2\n")
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
    assert "input standard input ('-') is missing feature column(s) soil" in wrong.stderr
    assert "traintop-input-" not in wrong.stderr  # the copy it was read from is no name of the user's


def test_a_row_with_one_field_fewer_than_the_header_is_refused_not_read_as_missing(finished, tmp_path):
    path = tmp_path / "short.csv"
    path.write_text("soil,sunlight_hours,water_ml,fertilizer,temperature_c\nclay,5,200,yes,20\nclay,5,200,yes\n")
    proc = traintop("predict", "latest", str(path), runs_dir=finished)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stdout == ""
    assert f"input: {path}, line 3 has 4 field(s) where the header names 5 columns" in proc.stderr


@pytest.mark.parametrize("command", ["export", "predict"])
@pytest.mark.parametrize("out, why", [
    ("", "argument --out: is empty; give a path"),
    ("LINK", "is a link to"),
    ("LONG", "File name too long"),
    ("FOLDER", "is a folder"),
])
def test_an_out_path_that_cannot_be_written_is_refused_naming_it(finished, tmp_path, command, out, why):
    """Refused with exit 2 and one line, never a traceback, and nothing half-written left."""
    if out == "LINK":
        (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
        out = str(tmp_path / "gone")
    elif out == "LONG":
        out = str(tmp_path / ("n" * 300))
    elif out == "FOLDER":  # what the command would write is a folder there
        (tmp_path / "out" / "steps.csv").mkdir(parents=True)
        out = str(tmp_path / "out") if command == "export" else str(tmp_path)
    args = ["export", "latest"] if command == "export" else ["predict", "latest", str(PLANTS_CSV)]
    proc = traintop(*args, "--out", out, runs_dir=finished)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert why in proc.stderr and proc.stdout == ""
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("cell, why", [
    ("abc", "is not a number"),
    ("inf", "is not a finite number"),
    ("-inf", "is not a finite number"),
    ("NaN", "is not a finite number"),
    ("1e400", "is not a finite number"),
])
def test_a_numeric_input_that_is_not_a_finite_number_is_refused_naming_row_and_column(finished, tmp_path,
                                                                                       cell, why):
    rows = pd.read_csv(PLANTS_CSV)[FEATURES].head(5).astype(object)
    rows.loc[3, "water_ml"] = cell
    path = tmp_path / "bad.csv"
    rows.to_csv(path, index=False)
    proc = traintop("predict", "latest", str(path), runs_dir=finished)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{path}, row 3 (line 5), column 'water_ml': " in proc.stderr and why in proc.stderr
    assert proc.stdout == "" and "Traceback" not in proc.stderr


def test_a_blank_numeric_input_is_still_missing_and_predicted(finished, tmp_path):
    rows = pd.read_csv(PLANTS_CSV)[FEATURES].head(3)
    rows.loc[1, "water_ml"] = None
    path = tmp_path / "gap.csv"
    rows.to_csv(path, index=False)
    proc = traintop("predict", "latest", str(path), runs_dir=finished)
    assert proc.returncode == 0, proc.stderr
    assert len(read_table(proc.stdout)) == 3


async def test_the_predict_command_refuses_bad_numbers_with_a_reply(finished):
    from traintop.engine.client import FinishedRun

    run = FinishedRun(resolve_run("latest", finished))
    try:
        good = {"soil": "loam", "sunlight_hours": 7.5, "water_ml": 200, "fertilizer": "yes", "temperature_c": 20}
        for bad, why in (("abc", "is not a number"), ("inf", "is not a finite number")):
            reply = await run.send(cmd.Predict(request_id="b", inputs=[good, {**good, "sunlight_hours": bad}]))
            assert not reply.ok and f"input 1, column 'sunlight_hours': '{bad}' {why}" in reply.message
        assert (await run.send(cmd.Predict(request_id="g", inputs=[good]))).ok  # and it still answers
    finally:
        await run.close()


PREPROCESS_EDITS = {  # preprocess.json edited by hand: one value that predict could not use
    "a word for a mean": (lambda p: p["columns"][1].update(mean="x"), "'s mean is 'x', not a finite number"),
    "no std": (lambda p: p["columns"][1].update(std=None), "'s std is None, not a positive number"),
    "a zero std": (lambda p: p["columns"][1].update(std=0), "'s std is 0, not a positive number"),
    "a dict for a class": (lambda p: p.update(classes=["wilted", {"x": 2}]), "classes are not a list of names"),
    "a column twice": (lambda p: p["columns"].append(dict(p["columns"][1])), "a name of their own"),
    "no columns": (lambda p: p.update(columns=[]), "columns are not a list"),
    "a newer version": (lambda p: p.update(version=99), "its version is 99"),
}


@pytest.mark.parametrize("edit", list(PREPROCESS_EDITS))
def test_an_edited_preprocess_json_is_named_by_predict_with_what_is_wrong(finished, tmp_path, edit):
    import json
    import shutil

    from traintop.engine.runstore import resolve_run

    folder = resolve_run("latest", finished)
    copy = tmp_path / folder.run_id
    shutil.copytree(folder.path, copy)
    fitted = json.loads((copy / "preprocess.json").read_text())
    change, why = PREPROCESS_EDITS[edit]
    change(fitted)
    (copy / "preprocess.json").write_text(json.dumps(fitted))
    proc = traintop("predict", str(copy), str(PLANTS_CSV), runs_dir=finished)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "Warning" not in proc.stderr, proc.stderr
    assert "preprocess.json" in proc.stderr and why in proc.stderr and proc.stdout == ""
