"""`traintop predict` on images (a file, a folder) and text rows gives the engine's own answers."""

from __future__ import annotations

import csv
import io
import subprocess
import sys

import pytest

from drawn import sentences_frame, shapes_folder
from traintop.engine import commands as cmd
from traintop.engine.config import build_config
from traintop.engine.predictor import Predictor
from traintop.engine.run import Run


def trained(tmp_path, raw: dict):
    run = Run.prepare(build_config(raw), tmp_path / "runs")
    assert run.train() == "completed"
    return run


def engine_answers(run, records):
    reply = run.session.apply(cmd.Predict(request_id="e", inputs=records, weights="best"))
    assert reply.ok, reply.message
    return reply.data["outputs"]


def cli_predict(run, target) -> list[dict[str, str]]:
    proc = subprocess.run([sys.executable, "-m", "traintop.tui", "predict", str(run.folder.path), str(target)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return list(csv.DictReader(io.StringIO(proc.stdout)))


def assert_same(table, answers, classes):
    assert len(table) == len(answers)
    for row, answer in zip(table, answers):
        assert row["prediction"] == answer["label"]
        for c in classes:
            assert float(row[f"p_{c}"]) == pytest.approx(answer["probabilities"][c], abs=1e-6)


def test_predict_on_an_image_file_and_a_folder_matches_the_engine(tmp_path):
    folder = shapes_folder(tmp_path / "shapes", per_class=20, size=20)
    run = trained(tmp_path, {
        "data": {"source": "image_folder", "path": str(folder), "image_size": 16, "batch_size": 16},
        "model": {"kind": "cnn", "channels": [8, 16], "hidden": [32]}, "train": {"epochs": 3}})
    new = shapes_folder(tmp_path / "new", per_class=3, size=28, seed=5)  # unseen images, another size
    files = sorted(str(p) for p in new.rglob("*.png"))
    engine = engine_answers(run, [{"path": f} for f in files])
    table = cli_predict(run, new)
    assert [r["row"] for r in table] == files
    assert_same(table, engine, run.trainer.data.classes)
    one = cli_predict(run, files[0])
    assert_same(one, engine[:1], run.trainer.data.classes)


@pytest.mark.parametrize("columns", [["review", "stars", "topic"], ["review", "topic"]], ids=["with stars", "text only"])
def test_predict_on_text_rows_matches_the_engine(tmp_path, write_csv, columns):
    path = write_csv(sentences_frame(300, seed=2)[columns])
    run = trained(tmp_path, {
        "data": {"source": "csv", "path": str(path), "target": "topic", "text": "review"},
        "model": {"kind": "text", "hidden": [16]}, "optim": {"lr": 0.01}, "train": {"epochs": 4}})
    rows = sentences_frame(12, seed=9)[columns].drop(columns="topic")
    rows.loc[0, "review"] = "words never seen anywhere zzz"
    engine = engine_answers(run, rows.to_dict("records"))
    assert_same(cli_predict(run, write_csv(rows, "new.csv")), engine, run.trainer.data.classes)


def test_a_python_model_is_rebuilt_from_its_module_to_predict(tmp_path):
    (tmp_path / "user_lines.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "def data():\n"
        "    g = torch.Generator().manual_seed(0)\n"
        "    x = torch.randn(300, 4, generator=g)\n"
        "    y = (x.sum(1) > 0).long()\n"
        "    return (x[:200], y[:200]), (x[200:250], y[200:250]), (x[250:], y[250:])\n\n"
        "def model(info):\n"
        "    return nn.Sequential(nn.Linear(info.input_shape[0], 8), nn.ReLU(), nn.Linear(8, info.n_outputs))\n")
    config = tmp_path / "config.toml"
    config.write_text('[data]\nsource = "python"\nfactory = "user_lines:data"\n'
                      '[model]\nkind = "python"\nfactory = "user_lines:model"\n[train]\nepochs = 3\n')
    from traintop.engine.config import load_config

    run = Run.prepare(load_config(config), tmp_path / "runs")
    assert run.train() == "completed"
    records = [{"input": [0.5, -1.0, 2.0, 0.1]}, {"input": [-1.0, -1.0, -1.0, 0.0]}]
    engine = engine_answers(run, records)
    saved = Predictor.from_folder(run.folder, "best").predict(records)
    for a, b in zip(engine, saved):
        assert a["label"] == b["label"]
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-6)
