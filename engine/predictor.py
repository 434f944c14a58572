"""A saved run's model and preprocessing, rebuilt from its folder to predict raw inputs.

Reads only files the run has already written (config.toml, preprocess.json, a checkpoint), so a
live run can be predicted from without disturbing it.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import IO, Any

import torch

from . import commands as cmd
from . import events as ev
from . import wire
from .checkpoint import load_checkpoint
from .config import Config, load_config
from .data import Dataset, images, load_data, load_preprocessor, read_csv_file
from .data.tabular import BadValue, separator_hint
from .errors import UserError
from .evaluation import NotFiniteAnswer, predict_outputs, predict_records
from .models import DataInfo, Objective, build_model, loss_name, n_model_outputs
from .runstore import RunFolder, read_events, refuse_foreign_code, started_event

CHECKPOINTS = ("best", "last")
CHUNK = 256  # images decoded and predicted at a time


def run_config(folder: RunFolder, trust: bool = False) -> Config:
    """The run's resolved config, with relative paths and Python factories found where it was
    configured (meta.json's config_dir).

    Every path that builds a run's model or data from its folder comes through here. A config
    that imports code (model.kind or data.source "python") is refused, unless `trust`, when the
    folder is not the current user's own, in place: importing runs that code as the user.
    """
    if not folder.config.is_file():
        raise UserError(f"{folder.config} is missing: the run folder is incomplete or damaged")
    cfg = load_config(folder.config)
    meta = folder.read_json("meta.json")
    config_dir = (meta or {}).get("config_dir", str(folder.path))
    if not isinstance(config_dir, str) or not config_dir:
        raise UserError(f"{folder.meta} is damaged: its config_dir is {config_dir!r}, not a folder's path")
    cfg.base_dir = Path(config_dir)
    refuse_foreign_code(folder, meta, cfg.imported_code(), config_dir, trust)
    return cfg


def _unlike_its_training(folder: RunFolder, info: DataInfo) -> str | None:
    """How the data preprocess.json describes differs from what the run said it trained on (its
    run_started event), or None: the same, or nothing to tell by."""
    started = started_event(folder)
    data = started.data if started is not None and isinstance(started.data, dict) else {}
    shape, classes = data.get("input_shape"), data.get("classes")
    if isinstance(shape, list) and shape != list(info.input_shape):
        return f"it gives inputs of shape {list(info.input_shape)} where the run trained on {shape}"
    if isinstance(classes, list) and classes != list(info.classes):
        if len(classes) != len(info.classes):
            return f"it names {len(info.classes)} classes where the run trained on {len(classes)}"
        differ = [f"{now!r} for {then!r}" for then, now in zip(classes, info.classes) if then != now]
        return f"it names its classes otherwise than the run trained on them ({', '.join(differ[:3])})"
    return None


class Predictor:
    """Frozen weights and the fitted preprocessing of one run: raw records in, answers out."""

    def __init__(self, model: torch.nn.Module, objective: Objective, preprocess,
                 checkpoint: str, step: int):
        self.model = model
        self.objective = objective
        self.preprocess = preprocess
        self.checkpoint = checkpoint
        self.step = step
        self.skipped = ""  # files of an input folder that could not be read, as a warning

    @classmethod
    def from_folder(cls, folder: RunFolder, checkpoint: str = "best", trust: bool = False) -> Predictor:
        """The run's model with the weights of `checkpoint` (best or last), on the CPU.

        `trust`: import the run's Python model even from a folder not the user's own, in place.
        """
        if checkpoint not in CHECKPOINTS:
            raise UserError(f"--checkpoint is {checkpoint!r}; allowed: {', '.join(CHECKPOINTS)}")
        for path, what in ((folder.config, "config.toml"), (folder.preprocess, "preprocess.json")):
            if not path.is_file():
                raise UserError(f"run {folder.run_id} has no {what}: it stopped before its data was "
                                "prepared, so there is no model to predict with")
        path = folder.best if checkpoint == "best" else folder.last
        if not path.is_file():
            other = "last" if checkpoint == "best" else "best"
            raise UserError(f"run {folder.run_id} has no {checkpoint}.pt yet"
                            + (f"; try --checkpoint {other}" if (folder.checkpoints / f"{other}.pt").is_file()
                               else ": nothing has been saved"))
        cfg = run_config(folder, trust)
        fitted = folder.read_json("preprocess.json")
        try:
            pre = load_preprocessor(fitted)
            n_classes = len(pre.classes)
            objective = Objective(loss_name(cfg, pre.task, n_classes))
            info = DataInfo.of(pre, n_model_outputs(objective.name, pre.task, n_classes))
        except UserError as e:
            raise UserError(f"{folder.preprocess} is damaged: {e}") from None
        except Exception as e:  # noqa: BLE001 - any odd value in a damaged file
            raise UserError(f"{folder.preprocess} is damaged: it does not describe fitted preprocessing "
                            f"({type(e).__name__}: {e})") from None
        if (changed := _unlike_its_training(folder, info)) is not None:  # classes renamed would load, and mislabel
            raise UserError(f"{folder.preprocess} is damaged: {changed}; it was changed after the run, or "
                            "comes from another run")
        model = build_model(cfg, info)
        state = load_checkpoint(path)
        try:
            model.load_state_dict(state["model"])
            step = int(state.get("step", 0))
        except Exception as e:  # noqa: BLE001 - a checkpoint of another model, or damaged values
            reason = f"no {e}" if isinstance(e, KeyError) else type(e).__name__
            raise UserError(f"{path} does not fit this run's model ({reason}): it is damaged or "
                            "comes from another run") from None
        model.eval()
        return cls(model, objective, pre, checkpoint, step)

    def predict(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One answer per raw record: a label with class probabilities, or a value."""
        return predict_records(self.model, self.objective, self.preprocess, records, torch.device("cpu"))

    def predict_input(self, path: Path) -> tuple[list[str], list[dict[str, Any]]]:
        """Row ids and answers for an input file of the kind the run trained on: a CSV of rows
        (tables, text), or an image file or a folder of them (images). Files of a folder that
        cannot be read are left out and named in `self.skipped`, as training skips them."""
        kind = self.preprocess.kind
        if kind == "image":
            return self.predict_images(path)
        if kind == "tensor":
            raise UserError("this run trained on a Python dataset: predict from Python with records "
                            '{"input": [...]}, or from the dashboard')
        if path.is_dir():
            raise UserError(f"input {path} is a folder; this run trained on a table: give a CSV file")
        return self.predict_csv(path)

    def predict_images(self, path: Path) -> tuple[list[str], list[dict[str, Any]]]:
        """An image file, or every image under a folder (sorted), and their answers. A folder's files are
        read by their content, as training reads its folders: a PNG with no suffix is an image, a
        text file named .png is not, and each file that is no image is named in `self.skipped`."""
        self.skipped = ""
        if not path.exists():
            raise UserError(f"input {path} does not exist")
        if not path.is_dir():
            try:
                return [str(path)], self.predict([{"path": str(path)}])
            except BadValue as e:  # an answer that is not finite
                raise UserError(e.at(f"input {path}")) from None
        found = sorted(p for p in path.rglob("*") if not p.name.startswith(".") and not p.is_dir())
        files = [p for p in found if p.is_file()]
        # a pipe, a device or a broken link is never opened (a pipe with no writer would wait forever)
        bad: list[tuple[Path, str]] = [(p, images.NOT_REGULAR) for p in found if not p.is_file()]
        if not files:
            raise UserError(f"input folder {path} has no files; give an image or a folder of images"
                            + (f" ({images.bad_files_warning(bad, path)})" if bad else ""))
        answers: list[dict[str, Any]] = []
        kept: list[Path] = []
        for i in range(0, len(files), CHUNK):
            chunk = files[i:i + CHUNK]
            try:
                done, found = self._answer_files(chunk, bad)
            except UserError:
                readable = []  # a file of the folder failed: answer the others as one batch, name it
                for f in chunk:
                    why = images.unreadable(f, self.preprocess.channels, self.preprocess.image_size)
                    if why is None:
                        readable.append(f)
                    else:
                        bad.append((f, why))
                done, found = self._answer_files(readable, bad)
            answers += found
            kept += done
        if bad:
            self.skipped = images.bad_files_warning(bad, path)
            if not kept:
                raise UserError(f"input folder {path}: no image file could be read ({self.skipped})")
        return [str(f) for f in kept], answers

    def _answer_files(self, files: list[Path], bad: list) -> tuple[list[Path], list[dict[str, Any]]]:
        """The image files answered, and their answers: one whose answer is not a finite number is
        left out, into `bad`."""
        files = list(files)
        while files:
            try:
                return files, self.predict([{"path": str(f)} for f in files])
            except NotFiniteAnswer as e:
                bad.append((files.pop(e.row), images.NOT_FINITE))
        return [], []

    def predict_csv(self, path: Path) -> tuple[list[str], list[dict[str, Any]]]:
        """The rows of a CSV of raw features (extra columns ignored) and their answers."""
        frame = read_csv_file(path, "input", nan_is_missing=False)
        missing = [c for c in self.preprocess.features if c not in frame.columns]
        if missing:
            raise UserError(f"input {path} is missing feature column(s) {', '.join(missing)}; "
                            f"the model was trained on: {', '.join(self.preprocess.features)}"
                            + separator_hint([str(c) for c in frame.columns]))
        frame = frame[self.preprocess.features]
        ids = [str(i) for i in range(len(frame))]
        try:
            return ids, self.predict(frame.to_dict("records"))
        except BadValue as e:
            raise UserError(f"input {e.at(f'{path}, row {e.row} (line {e.row + 2})')}") from None

    def header(self) -> list[str]:
        """The columns of a predictions table: the row (an image's path), the prediction, ..."""
        if self.preprocess.task == "classification":
            return ["row", "prediction"] + [f"p_{c}" for c in self.preprocess.classes]
        return ["row", "prediction"]

    def table(self, ids: list[str], answers: list[dict[str, Any]]) -> str:
        """Predictions as CSV text: the row id, the prediction, each class's probability."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(self.header())
        for row_id, a in zip(ids, answers):
            if "probabilities" in a:
                writer.writerow([row_id, a["label"], *(repr(a["probabilities"][c]) for c in self.preprocess.classes)])
            else:
                writer.writerow([row_id, repr(a["value"])])
        return buf.getvalue()


class RunPredictions:
    """Answers `predict` commands for a run no engine serves, from its saved checkpoints.

    `current` weights are the last saved ones (last.pt), `best` are best.pt; held-out samples
    come from the run's own split of its data, loaded once on first use.
    """

    def __init__(self, folder: RunFolder, trust: bool = False):
        self.folder = folder
        self.trust = trust
        self.predictors: dict[str, Predictor] = {}
        self.data: Dataset | None = None
        events, _ = read_events(folder.events)
        self.test_done = any(isinstance(e, ev.TestResult) for e in events)

    def predictor(self, weights: str) -> Predictor:
        checkpoint = "last" if weights == "current" else "best"
        if checkpoint not in self.predictors:
            path = self.folder.last if checkpoint == "last" else self.folder.best
            other = self.folder.best if checkpoint == "last" else self.folder.last
            if not path.is_file() and other.is_file():  # said as the inference view's key, not predict's flag
                raise UserError(f"run {self.folder.run_id} has no {path.name} yet: press w for the "
                                f"{'best' if checkpoint == 'last' else 'current'} weights")
            self.predictors[checkpoint] = Predictor.from_folder(self.folder, checkpoint, self.trust)
        return self.predictors[checkpoint]

    def dataset(self) -> Dataset:
        if self.data is None:
            self.data = load_data(run_config(self.folder, self.trust))
        return self.data

    def answer(self, c: cmd.Predict) -> cmd.Reply:
        """The reply the engine would give, computed from the saved weights."""
        try:
            p = self.predictor(c.weights)
            if any("split" in item for item in c.inputs):
                outputs = predict_outputs(p.model, p.objective, self.dataset(), c.inputs, torch.device("cpu"),
                                          allow_test=self.test_done, with_inputs=c.with_inputs)
            else:
                outputs = p.predict(c.inputs)
        except BadValue as e:  # named as the live engine names it
            return cmd.Reply(False, e.at(f"input {e.row}"))
        except UserError as e:
            return cmd.Reply(False, str(e))
        except Exception as e:  # noqa: BLE001 - as in the engine: a bad input gets an answer, not a crash
            return cmd.Reply(False, f"could not predict on these inputs: {type(e).__name__}: {e}")
        return cmd.Reply(True, f"{len(outputs)} prediction(s)",
                         {"outputs": outputs, "weights": c.weights, "step": p.step})


def serve_predictions(folder: RunFolder, inp: IO[bytes], out: IO[bytes], trust: bool = False) -> None:
    """Answer `predict` command lines from `inp` with reply lines on `out`, as the socket does:
    every line gets one reply, whatever its bytes.

    `python -m traintop.engine.predictor RUN_FOLDER [--trust]` runs this on stdin and stdout, for
    a client that must not import torch itself (the dashboard, on a run no engine serves).
    """
    answers = RunPredictions(folder, trust)
    for line in inp:
        request_id, command = wire.read_command(line)
        if isinstance(command, cmd.Reply):
            reply = command
        elif not isinstance(command, cmd.Predict):
            reply = cmd.Reply(False, f"run {folder.run_id} has finished; only predict is answered")
        else:
            reply = answers.answer(command)
        out.write(wire.reply_line(request_id, reply))
        out.flush()


def main(argv: list[str]) -> int:
    """Serve predictions for the run folder `argv[0]` on stdin and stdout (`--trust` passed on)."""
    import os
    import sys

    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # what user code prints must not mix with replies
    try:
        serve_predictions(RunFolder(Path(argv[0])), sys.stdin.buffer, replies, trust="--trust" in argv[1:])
    except UserError as e:  # the client shows the last line of stderr as the reason
        print(f"traintop: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
