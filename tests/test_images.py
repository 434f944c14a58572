"""Image folders: drawn shapes learned by a CNN, bad files skipped, streaming equal to in-memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from drawn import shapes_folder
from traintop.engine import commands as cmd
from traintop.engine.config import build_config
from traintop.engine.data import load_data, load_preprocessor
from traintop.engine.data.feed import LoaderFeed, TensorFeed, flip_and_crop
from traintop.engine.errors import UserError
from traintop.engine.run import Run


def image_config(path, **data):
    return build_config({
        "data": {"source": "image_folder", "path": str(path), "image_size": 24, "batch_size": 32, **data},
        "model": {"kind": "cnn", "channels": [16, 32], "hidden": [64]}, "optim": {"lr": 0.003},
        "train": {"epochs": 40}, "early_stopping": {"enabled": False}})


def events_of(run) -> list[dict]:
    return [json.loads(line) for line in run.folder.events.read_text().splitlines()]


def test_cnn_learns_drawn_shapes_to_90_percent_test_accuracy_within_a_minute(tmp_path):
    folder = shapes_folder(tmp_path / "shapes", per_class=200, seed=0)
    started = time.monotonic()
    run = Run.prepare(image_config(folder), tmp_path / "runs")
    assert run.train() == "completed"
    seconds = time.monotonic() - started
    events = events_of(run)
    test = next(e for e in events if e["event"] == "test_result")
    assert test["metrics"]["accuracy"] >= 0.9, test
    assert seconds < 60, seconds
    data = next(e for e in events if e["event"] == "run_started")["data"]
    assert data["classes"] == ["circle", "square", "triangle"]
    assert (data["image_size"], data["channels"], data["streaming"]) == (24, 3, False)
    assert data["batch"] == {"inputs": [32, 3, 24, 24], "targets": [32]}
    pre = json.loads(run.folder.preprocess.read_text())
    assert pre["kind"] == "image" and len(pre["mean"]) == len(pre["std"]) == 3


def test_corrupt_and_non_image_files_are_skipped_with_one_warning_naming_them(tmp_path):
    folder = shapes_folder(tmp_path / "shapes", per_class=10, size=16)
    (folder / "circle" / "noise.png").write_bytes(np.random.default_rng(0).bytes(500))
    (folder / "square" / "notes.txt").write_text("not an image")
    good = (folder / "triangle" / "0000.png").read_bytes()
    (folder / "triangle" / "truncated.png").write_bytes(good[:60])
    run = Run.prepare(image_config(folder, image_size=16), tmp_path / "runs")
    data = run.trainer.data
    assert sum(len(data.y[s]) for s in ("train", "val", "test")) == 30
    assert data.extra["skipped_files"] == 3
    run.trainer.cfg.train.epochs = 1
    run.train()
    warnings = [e for e in events_of(run) if e["event"] == "warning" and e["kind"] == "data"]
    assert len(warnings) == 1
    message = warnings[0]["message"]
    assert "3 unreadable" in message
    for name in ("noise.png", "notes.txt", "truncated.png"):
        assert name in message


@pytest.mark.parametrize("make, match", [
    (lambda root: (root / "cats").mkdir(parents=True) or (root / "dogs").mkdir(), "is empty"),
    (lambda root: root.mkdir(), "no sub-folders"),
    (lambda root: None, "does not exist"),
])
def test_an_empty_class_folder_or_no_images_is_an_error_naming_it(tmp_path, make, match):
    root = tmp_path / "photos"
    make(root)
    with pytest.raises(UserError, match=match) as e:
        load_data(image_config(root))
    assert "photos" in str(e.value)


def test_a_class_folder_of_only_non_images_is_an_error_naming_it(tmp_path):
    folder = shapes_folder(tmp_path / "shapes", per_class=3, size=16, shapes=("circle",))
    (folder / "notes").mkdir()
    (folder / "notes" / "readme.txt").write_text("hello")
    with pytest.raises(UserError, match=r"notes has no readable images"):
        load_data(image_config(folder))


@pytest.mark.parametrize("fmt, memory_limit_mb", [("PNG", 1024), ("PNG", 1), ("JPEG", 1024)])
def test_a_class_whose_every_image_is_cut_short_is_an_error_naming_it(tmp_path, fmt, memory_limit_mb):
    """Files that open (their header is whole) but cannot be decoded: a class left with none is an
    error, on the in-memory path and (for formats whose damage shows without decoding) the streamed one."""
    from PIL import Image

    folder = shapes_folder(tmp_path / "shapes", per_class=6, size=16, shapes=("circle", "square"))
    for path in sorted((folder / "square").glob("*.png")):
        kept = path.with_suffix(f".{fmt.lower()}")
        with Image.open(path) as image:
            image.convert("RGB").save(kept, fmt)
        if kept != path:
            path.unlink()
        kept.write_bytes(kept.read_bytes()[:len(kept.read_bytes()) // 2])
    with pytest.raises(UserError, match=r"square has no readable images"):
        load_data(image_config(folder, image_size=16, memory_limit_mb=memory_limit_mb))


def test_sixteen_bit_images_keep_their_contrast(tmp_path):
    """A 16-bit PNG (Pillow's I;16) is scaled to 8 bits, not clipped at 255 into a white square:
    two classes that differ only in brightness stay apart, and the model learns them."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, low in (("dim", 1000), ("bright", 30000)):
        (tmp_path / "deep" / name).mkdir(parents=True)
        for i in range(12):
            pixels = rng.integers(low, low + 20000, (8, 8))
            if i % 2:  # a 16-bit PNG (I;16), and a 16-bit PGM, which Pillow opens as I
                Image.fromarray(pixels.astype(np.uint16)).save(tmp_path / "deep" / name / f"{i}.png")
            else:
                Image.fromarray(pixels.astype(np.int32), "I").save(tmp_path / "deep" / name / f"{i}.pgm")
    data = load_data(image_config(tmp_path / "deep", image_size=8))
    assert data.extra["channels"] == 1
    mean, std = data.preprocess.mean[0], data.preprocess.std[0]
    assert 0.05 < mean < 0.5 and std > 0.05  # of 0-1: not 1.0 and 0 as every pixel at 255 would give
    x, y = data.x["train"], data.y["train"]
    bright = data.preprocess.classes.index("bright")
    assert x[y == bright].mean() > x[y != bright].mean() + 1  # a standard deviation and more apart


def test_split_folders_taken_for_classes_and_loose_images_are_named_in_a_warning(tmp_path):
    """train/ and val/ each holding circle/ and square/ train as the classes train and val: said,
    with the fix; an image beside the class folders is in no class: said too."""
    for split in ("train", "val"):
        shapes_folder(tmp_path / "splits" / split, per_class=6, size=16, shapes=("circle", "square"))
    (tmp_path / "splits" / "stray.png").write_bytes(next((tmp_path / "splits" / "val" / "circle").glob("*.png"))
                                                    .read_bytes())
    data = load_data(image_config(tmp_path / "splits", image_size=16))
    assert data.preprocess.classes == ["train", "val"]
    said = [message for kind, message in data.warnings if kind == "data"]
    assert any("each holds the same folders (circle, square)" in m and "set data.path" in m for m in said), said
    assert any("1 file(s) directly in" in m and "stray.png" in m for m in said), said
    shapes_folder(tmp_path / "plain", per_class=6, size=16, shapes=("circle", "square"))
    assert not load_data(image_config(tmp_path / "plain", image_size=16)).warnings


def test_streaming_path_trains_to_the_same_numbers_as_the_in_memory_path(tmp_path):
    folder = shapes_folder(tmp_path / "shapes", per_class=60, size=24)
    results = []
    for limit in (1024, 1):  # 180 images of 3x24x24 floats: about 1.2 MB decoded
        cfg = image_config(folder, memory_limit_mb=limit)
        cfg.train.epochs = 3
        run = Run.prepare(cfg, tmp_path / "runs")
        feed = run.trainer.feeds["train"]
        assert isinstance(feed, LoaderFeed if limit == 1 else TensorFeed)
        assert run.train() == "completed"
        events = events_of(run)
        results.append(([e["val_loss"] for e in events if e["event"] == "validation"],
                        next(e for e in events if e["event"] == "test_result")["metrics"]))
    (memory_val, memory_test), (stream_val, stream_test) = results
    # On a GPU, convolutions pick their algorithms per call, so the last digits may differ.
    rel = 1e-4 if run.trainer.device.type == "cpu" else 1e-3
    assert stream_val == pytest.approx(memory_val, rel=rel)
    assert stream_test == pytest.approx(memory_test, rel=rel)


def test_an_image_that_fails_to_decode_while_streaming_is_named_in_a_warning(tmp_path):
    """A JPEG cut short passes the scan (Pillow's verify cannot see it without decoding): on the
    streamed path it is decoded only when training reads it. It is trained as a black image, and a
    warning names it after that epoch, once, not again at every epoch."""
    from PIL import Image

    folder = shapes_folder(tmp_path / "shapes", per_class=100, size=24, shapes=("circle", "square"))
    good = sorted((folder / "square").glob("*.png"))[0]
    with Image.open(good) as image:
        image.convert("RGB").save(folder / "square" / "cut.jpg", "JPEG")
    cut = folder / "square" / "cut.jpg"
    cut.write_bytes(cut.read_bytes()[:len(cut.read_bytes()) * 4 // 5])  # its headers whole, its pixels not
    cfg = image_config(folder, memory_limit_mb=1, split=[0.9, 0.05, 0.05])  # 201 images: 1.4 MB decoded
    cfg.train.epochs = 3
    run = Run.prepare(cfg, tmp_path / "runs")
    assert isinstance(run.trainer.feeds["train"], LoaderFeed)
    assert run.train() == "completed"
    warned = [e for e in events_of(run) if e["event"] == "warning" and "decoded" in e["message"]]
    assert len(warned) == 1 and warned[0]["kind"] == "data", warned
    assert "square/cut.jpg" in warned[0]["message"] and "black" in warned[0]["message"]
    assert not [e for e in events_of(run) if e["event"] == "warning" and "skipped" in e["message"]]


def test_flip_and_crop_gives_each_image_a_flipped_and_shifted_copy_of_itself():
    torch.manual_seed(0)
    x = torch.randn(6, 3, 16, 16)
    out = flip_and_crop(x)
    assert out.shape == x.shape and not torch.equal(out, x)
    pad = 2
    for image, original in zip(out, x):
        padded = [torch.nn.functional.pad(o, (pad,) * 4) for o in (original, original.flip(2))]
        candidates = [p[:, dy:dy + 16, dx:dx + 16] for p in padded
                      for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)]
        assert any(torch.equal(image, c) for c in candidates)


def test_augmentation_touches_training_batches_only(tmp_path):
    folder = shapes_folder(tmp_path / "shapes", per_class=8, size=16)
    data = load_data(image_config(folder, image_size=16, augment=True))
    assert data.augment is flip_and_crop
    plain = load_data(image_config(folder, image_size=16))
    for split in ("val", "test"):  # validation and test inputs are never augmented
        assert np.array_equal(data.x[split], plain.x[split])


def test_channels_come_from_the_files_unless_configured(tmp_path):
    from PIL import Image

    root = tmp_path / "gray"
    for label in ("dark", "light"):
        (root / label).mkdir(parents=True)
        for i in range(6):
            Image.new("L", (10, 10), 40 * i + (0 if label == "dark" else 20)).save(root / label / f"{i}.png")
    assert load_data(image_config(root, image_size=8)).x["train"].shape[1:] == (1, 8, 8)
    assert load_data(image_config(root, image_size=8, channels=3)).x["train"].shape[1:] == (3, 8, 8)


def test_saved_preprocessing_turns_image_files_into_the_same_inputs(tmp_path):
    folder = shapes_folder(tmp_path / "shapes", per_class=10, size=20)
    data = load_data(image_config(folder, image_size=12))
    again = load_preprocessor(json.loads(json.dumps(data.preprocess.to_json())))
    for split in ("train", "val"):
        assert np.array_equal(again.transform(list(data.raw[split]["path"])), data.x[split])
    with pytest.raises(UserError, match="does not exist"):
        again.transform([str(tmp_path / "missing.png")])


async def test_a_held_out_image_is_shown_with_its_path_pixels_and_true_label(tmp_path):
    folder = shapes_folder(tmp_path / "shapes", per_class=10, size=20)
    run = Run.prepare(image_config(folder, image_size=12), tmp_path / "runs")
    path = str(run.trainer.data.raw["val"]["path"][0])
    reply = run.session.apply(cmd.Predict(request_id="1", inputs=[{"split": "val", "index": 0}, {"path": path}]))
    assert reply.ok, reply.message
    held, typed = reply.data["outputs"]
    assert held["input"]["path"] == path and held["true"] == run.trainer.data.raw_target["val"][0]
    pixels = held["input"]["pixels"]
    assert len(pixels) == 12 and all(len(r) == 12 and all(0 <= v <= 255 for v in r) for r in pixels)
    assert held["probabilities"] == pytest.approx(typed["probabilities"])


def test_check_prints_the_image_summary(tmp_path, write_config):
    shapes_folder(tmp_path / "shapes", per_class=10, size=16)
    config = write_config('[data]\nsource = "image_folder"\npath = "shapes"\nimage_size = 16\n'
                          '[model]\nkind = "cnn"\n')
    proc = subprocess.run([sys.executable, "-m", "traintop.tui", "check", str(config)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "16x16, 3 channel(s) RGB, in memory" in proc.stdout
    assert "batch       inputs (21, 3, 16, 16), targets (21,)" in proc.stdout
    assert "circle (7), square (7), triangle (7)" in proc.stdout


def test_an_image_over_pillows_pixel_limit_is_skipped_in_training_and_refused_by_predict(tmp_path):
    from PIL import Image

    folder = shapes_folder(tmp_path / "shapes", per_class=10, size=16)
    # 9e7 blank pixels pass Pillow's limit of about 8.9e7, yet the file is 11 kB
    Image.new("1", (10000, 9000)).save(folder / "circle" / "huge.png")
    run = Run.prepare(image_config(folder, image_size=16), tmp_path / "runs")
    assert run.trainer.data.extra["skipped_files"] == 1
    run.trainer.cfg.train.epochs = 1
    assert run.train() == "completed"
    [warning] = [e for e in events_of(run) if e["event"] == "warning" and e["kind"] == "data"]
    assert "circle/huge.png (10000x9000 pixels)" in warning["message"]
    assert "over Pillow's limit" in warning["message"]
    bigger = tmp_path / "bigger.png"  # past twice the limit, where Pillow itself refuses to open it
    Image.new("1", (20000, 20000)).save(bigger)
    for path in (folder / "circle" / "huge.png", bigger):
        proc = subprocess.run([sys.executable, "-m", "traintop.tui", "predict", str(run.folder.path), str(path)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert str(path) in proc.stderr and "refused" in proc.stderr and "Traceback" not in proc.stderr
        assert "pixels" in proc.stderr and proc.stdout == ""


def test_predict_on_a_folder_answers_every_readable_image_and_names_the_unreadable_ones(tmp_path):
    folder = shapes_folder(tmp_path / "shapes", per_class=10, size=16)
    run = Run.prepare(image_config(folder, image_size=16, batch_size=16), tmp_path / "runs")
    run.trainer.cfg.train.epochs = 1
    assert run.train() == "completed"
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    good = sorted((folder / "circle").glob("*.png"))[:3]
    for i, path in enumerate(good):
        (inputs / f"{i}.png").write_bytes(path.read_bytes())
    (inputs / "1a-truncated.png").write_bytes(good[0].read_bytes()[:60])
    (inputs / "noise.jpg").write_bytes(np.random.default_rng(0).bytes(500))
    (inputs / "3-no-suffix").write_bytes(good[1].read_bytes())  # read by content, as training reads
    (inputs / "4.jfif").write_bytes(good[2].read_bytes())
    (inputs / "notes.txt").write_text("not an image")
    os.mkfifo(inputs / "5-pipe.png")  # nothing writes to it: opened, it would wait forever
    (inputs / "6-device.png").symlink_to("/dev/zero")

    def predict(path):
        return subprocess.run([sys.executable, "-m", "traintop.tui", "predict", str(run.folder.path), str(path)],
                              capture_output=True, text=True, timeout=120)

    proc = predict(inputs)
    assert proc.returncode == 0, proc.stderr
    rows = proc.stdout.splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == [str(inputs / name) for name in
                                                   ("0.png", "1.png", "2.png", "3-no-suffix", "4.jfif")]
    assert "skipped 5 unreadable" in proc.stderr and "1a-truncated.png" in proc.stderr
    assert "noise.jpg" in proc.stderr and "notes.txt" in proc.stderr and "Traceback" not in proc.stderr
    assert "5-pipe.png (not a regular file: a pipe, a device or a broken link)" in proc.stderr
    assert "6-device.png (not a regular file" in proc.stderr
    for name in ("0.png", "1.png", "2.png", "3-no-suffix", "4.jfif"):  # only the unreadable ones left:
        (inputs / name).unlink()  # nothing to answer, an error naming them
    proc = predict(inputs)
    assert proc.returncode == 2 and "no image file could be read" in proc.stderr and "noise.jpg" in proc.stderr
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    proc = predict(inputs / "noise.jpg")  # one file named by the user: refused, as before
    assert proc.returncode == 2 and "could not be read as an image" in proc.stderr
    # weights that answer nothing finite: each image is named for it, none answered as NaN
    state = torch.load(run.folder.best, weights_only=True)
    state["model"] = {k: torch.full_like(v, float("inf")) if v.is_floating_point() else v
                      for k, v in state["model"].items()}
    torch.save(state, run.folder.best)
    images = tmp_path / "images"
    images.mkdir()
    (images / "0.png").write_bytes(good[0].read_bytes())
    (images / "1.png").write_bytes(good[1].read_bytes())
    proc = predict(images)
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
    assert "0.png (the model's answer is not a finite number)" in proc.stderr and "1.png (the model's" in proc.stderr
    proc = predict(images / "0.png")
    assert proc.returncode == 2 and f"input {images / '0.png'}: the model's answer is not a finite number" in proc.stderr
