"""A user's own Dataset and nn.Module from a Python file next to the config; torchvision, optional."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

from traintop.engine.config import load_config
from traintop.engine.data import load_data, load_preprocessor
from traintop.engine.errors import UserError
from traintop.engine.run import Run

USER_CODE = '''
import torch
from torch import nn
from torch.utils.data import Dataset

seen_info = []


class Rings(Dataset):
    """Points inside (class 0) or outside (class 1) a ring."""

    classes = ["inside", "outside"]

    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.rand(n, 2, generator=g) * 4 - 2
        self.y = (self.x.norm(dim=1) > 1.2).long()

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def datasets():
    return Rings(1200, 1), Rings(300, 2), Rings(300, 3)


def tensors():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 3, generator=g)
    y = x @ torch.tensor([1.5, -2.0, 0.5]) + 10
    return {"train": (x[:300], y[:300]), "val": (x[300:400], y[300:400]), "test": (x[400:], y[400:])}


class RingNet(nn.Module):
    def __init__(self, n_in, n_out):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_in, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, n_out))

    def forward(self, x):
        return self.net(x)


def model(info):
    seen_info.append(info)
    return RingNet(info.input_shape[0], info.n_outputs)


class WithSpare(RingNet):
    """A parameter the loss never reaches, as in a model with an unused head."""

    def __init__(self, n_in, n_out):
        super().__init__(n_in, n_out)
        self.spare = nn.Parameter(torch.ones(4))


def with_spare(info):
    return WithSpare(info.input_shape[0], info.n_outputs)


def not_a_model(info):
    return "a string"


def broken():
    return helper_that_fails()


def helper_that_fails():
    raise ValueError("the user's own bug")


def wrong_shape():
    x = torch.zeros(10, 2)
    return (x, torch.zeros(10, 3)), (x, torch.zeros(10, 3)), (x, torch.zeros(10, 3))


def raw_images():
    """8-bit images as a raw MNIST file holds them."""
    g = torch.Generator().manual_seed(0)
    split = lambda n: (torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8), torch.arange(n) % 2)
    return split(60), split(20), split(20)


def single_numbers():
    g = torch.Generator().manual_seed(0)
    split = lambda n: (torch.randn(n, generator=g), torch.arange(n) % 2)
    return split(60), split(20), split(20)
'''


@pytest.fixture
def user_folder(tmp_path):
    """A folder with the user's module and a config that uses it."""
    (tmp_path / "user_rings.py").write_text(USER_CODE)

    def config(data_factory="user_rings:datasets", model="[model]\nkind = \"python\"\nfactory = \"user_rings:model\"\n",
               extra=""):
        path = tmp_path / "config.toml"
        path.write_text(f'[data]\nsource = "python"\nfactory = "{data_factory}"\n{extra}\n{model}'
                        '[train]\nepochs = 25\n[optim]\nlr = 0.01\n[early_stopping]\nenabled = false\n')
        return path

    return config


def test_a_python_factory_dataset_and_model_train_and_the_model_sees_the_data_info(tmp_path, user_folder):
    run = Run.prepare(load_config(user_folder()), tmp_path / "runs")
    module = sys.modules["user_rings"]
    assert type(run.trainer.model).__name__ == "RingNet"
    info = module.seen_info[-1]
    assert info.input_shape == (2,) and info.n_outputs == 2 and info.classes == ("inside", "outside")
    assert info.feature_names == ("input",) and info.vocab_size == 0
    assert run.train() == "completed"
    events = [json.loads(line) for line in run.folder.events.read_text().splitlines()]
    test = next(e for e in events if e["event"] == "test_result")
    assert test["metrics"]["accuracy"] >= 0.9, test
    started = next(e for e in events if e["event"] == "run_started")["data"]
    assert started["classes"] == ["inside", "outside"] and started["n_train"] == 1200


@pytest.mark.parametrize("factory, kind, message", [
    ("raw_images", "cnn", "model.kind = 'cnn' takes floating-point inputs, and data.factory gives integers (int64)"),
    ("raw_images", "mlp", "model.kind = 'mlp' takes floating-point inputs"),
    ("single_numbers", "mlp", "model.kind = 'mlp' takes inputs of at least one dimension, and data.factory gives "
                              "single numbers (shape [])"),
])
def test_inputs_a_built_in_model_cannot_take_are_refused_by_check_naming_them(user_folder, tmp_path, factory, kind,
                                                                             message):
    path = user_folder(f"user_rings:{factory}", model=f'[model]\nkind = "{kind}"\n')
    proc = subprocess.run([sys.executable, "-m", "traintop.tui", "check", str(path)], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_a_parameter_the_loss_never_reaches_is_left_alone_by_the_optimizer(tmp_path, user_folder):
    path = user_folder(model='[model]\nkind = "python"\nfactory = "user_rings:with_spare"\n')
    overrides = ["train.epochs=2", 'optim.name="adamw"', "optim.weight_decay=0.5"]
    run = Run.prepare(load_config(path, overrides), tmp_path / "runs")
    first = run.trainer.model.net[0].weight.detach().clone()
    assert run.train() == "completed"
    model = run.trainer.model
    assert torch.equal(model.spare.detach(), torch.ones(4))  # no decay, as with zero_grad(set_to_none=True)
    assert not torch.equal(model.net[0].weight.detach(), first)


def test_tensor_pairs_with_float_targets_are_a_regression_in_the_targets_units(user_folder):
    data = load_data(load_config(user_folder("user_rings:tensors", model="")))
    assert data.task == "regression" and data.input_shape == [3]
    assert data.preprocess.target_mean == pytest.approx(float(data.raw_target["train"].mean()))
    again = load_preprocessor(json.loads(json.dumps(data.preprocess.to_json())))
    assert np.array_equal(again.transform([{"input": [0.0, 1.0, 2.0]}]), np.array([[0.0, 1.0, 2.0]], np.float32))


@pytest.mark.parametrize("factory, match", [
    ("user_rings:wrong_shape", "targets have shape"),
    ("user_rings:nothing", "has no function 'nothing'"),
    ("no_such_module:f", "module 'no_such_module' was not found"),
    ("justaname", "module:function"),
])
def test_a_bad_data_factory_is_an_error_that_says_what_is_wrong(user_folder, factory, match):
    with pytest.raises(UserError, match=match):
        load_data(load_config(user_folder(factory, model="")))


def test_a_model_factory_must_return_a_module(tmp_path, user_folder):
    path = user_folder(model='[model]\nkind = "python"\nfactory = "user_rings:not_a_model"\n')
    with pytest.raises(UserError, match="returned a str; it must return a torch.nn.Module"):
        Run.prepare(load_config(path), tmp_path / "runs")


def test_an_error_in_the_users_code_shows_their_traceback_not_ours_and_exits_2(tmp_path, user_folder):
    (tmp_path / "user_broken.py").write_text("import math\n\nx = 1\nraise RuntimeError('bad import')\n")
    for factory, expected in (("user_broken:f", "bad import"), ("user_rings:broken", "the user's own bug")):
        proc = subprocess.run([sys.executable, "-m", "traintop.tui", "check", str(user_folder(factory, model=""))],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert expected in proc.stderr
        assert "Traceback" in proc.stderr and "user_" in proc.stderr  # their frames
        assert "engine" not in proc.stderr and "importlib" not in proc.stderr  # not ours
    assert 'line 4' in subprocess.run(
        [sys.executable, "-m", "traintop.tui", "check", str(user_folder("user_broken:f", model=""))],
        capture_output=True, text=True, timeout=120).stderr


BROKEN_PARTS = """
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

class Failing(Dataset):
    def __len__(self):
        return 10
    def __getitem__(self, i):
        raise RuntimeError("item fails")

def failing():
    return Failing(), Failing(), Failing()

def frozen(info):
    layer = nn.Linear(info.input_shape[0], info.n_outputs)
    layer.requires_grad_(False)
    return layer

def good():
    g = torch.Generator().manual_seed(0)
    return [TensorDataset(torch.randn(60, 2, generator=g), torch.randint(0, 2, (60,), generator=g)) for _ in "abc"]
"""


@pytest.mark.parametrize("data, model, why", [
    ("parts:failing", "", "item 0 of the train Dataset failed"),
    ("parts:good", "parts:frozen", "no trainable parameters"),
    ("parts.py:good", "", 'as Python imports it (no ".py", no folder)'),
    ("../parts:good", "", 'as Python imports it (no ".py", no folder)'),
])
def test_a_dataset_that_fails_a_frozen_model_or_a_path_for_a_module_is_named_by_check_and_run(tmp_path, data, model,
                                                                                               why):
    (tmp_path / "parts.py").write_text(BROKEN_PARTS)
    config = tmp_path / "config.toml"
    model_table = f'[model]\nkind = "python"\nfactory = "{model}"\n' if model else ""
    config.write_text(f'[data]\nsource = "python"\nfactory = "{data}"\n{model_table}[train]\nepochs = 1\n')
    for command in (["check"], ["run", "--headless", "--runs-dir", str(tmp_path / "runs")]):
        proc = subprocess.run([sys.executable, "-m", "traintop.tui", *command, str(config)], capture_output=True,
                              text=True, timeout=120, cwd=tmp_path)
        assert proc.returncode == 2 and why in proc.stderr, proc.stderr
        assert "engine" not in proc.stderr  # their frames only, if any


def test_preprocess_json_without_a_kind_is_read_as_a_table():
    obj = {"task": "classification", "target": "y", "classes": ["a", "b"],
           "columns": [{"name": "x", "kind": "numeric", "fill": 0.0, "mean": 0.0, "std": 1.0}]}
    assert load_preprocessor(obj).kind == "tabular"


def test_torchvision_missing_or_unreachable_is_a_clear_message(tmp_path, monkeypatch, write_config):
    config = write_config('[data]\nsource = "torchvision"\ndataset = "MNIST"\n')
    monkeypatch.setattr("traintop.engine.data.vision.datasets_dir", lambda: tmp_path / "datasets")
    if importlib.util.find_spec("torchvision") is None:
        with pytest.raises(UserError, match=r'needs torchvision.*pip install "traintop\[vision\]"'):
            load_data(load_config(config))
    else:  # installed: an empty cache without download names the way out
        with pytest.raises(UserError, match="set data.download = true"):
            load_data(load_config(config))


def fake_torchvision(monkeypatch, dataset_class):
    """torchvision replaced by a stand-in whose MNIST is `dataset_class` (it is external and slow)."""
    tv = types.ModuleType("torchvision")
    tv.datasets = types.ModuleType("torchvision.datasets")
    tv.datasets.MNIST = dataset_class
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", tv.datasets)


def test_a_failed_download_is_a_clear_message(tmp_path, monkeypatch, write_config):
    class Offline:
        def __init__(self, root, train, download):
            raise OSError("[Errno -3] Temporary failure in name resolution")

    fake_torchvision(monkeypatch, Offline)
    monkeypatch.setattr("traintop.engine.data.vision.datasets_dir", lambda: tmp_path / "datasets")
    config = write_config('[data]\nsource = "torchvision"\ndataset = "MNIST"\ndownload = true\n')
    with pytest.raises(UserError, match="downloading MNIST into .*datasets failed: OSError"):
        load_data(load_config(config))


def test_a_torchvision_dataset_becomes_normalized_images_with_its_test_set(tmp_path, monkeypatch, write_config):
    import torch

    class TinyMNIST:
        classes = [f"{i} - digit" for i in range(3)]

        def __init__(self, root, train, download):
            n = 90 if train else 30
            g = torch.Generator().manual_seed(int(train))
            self.data = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
            self.targets = torch.arange(n) % 3

    fake_torchvision(monkeypatch, TinyMNIST)
    monkeypatch.setattr("traintop.engine.data.vision.datasets_dir", lambda: tmp_path / "datasets")
    data = load_data(load_config(write_config('[data]\nsource = "torchvision"\ndataset = "MNIST"\nimage_size = 16\n')))
    assert data.input_shape == [1, 16, 16] and data.classes == TinyMNIST.classes
    assert len(data.y["test"]) == 30 and len(data.y["train"]) + len(data.y["val"]) == 90
    assert abs(float(data.x["train"].mean())) < 1e-3 and abs(float(data.x["train"].std()) - 1) < 1e-2


# -- what a factory gets wrong, named ---------------------------------------------------------------

BAD_CODE = '''
import sys

import torch
from torch import nn


def pair(n, width=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, width, generator=g)
    return x, (x[:, 0] > 0).long()


def empty_val():
    return pair(40), (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)), pair(10)


def string_targets():
    x, y = pair(40)
    return (x, ["cat" if v else "dog" for v in y]), pair(10), pair(10)


def shapes_disagree():
    return pair(40), pair(10, width=4), pair(10)


def nan_inputs():
    x, y = pair(10, seed=1)
    x[7, 2] = float("nan")
    return pair(40), (x, y), pair(10)


def inf_targets():
    x, _ = pair(40)
    y = x[:, 0].clone()
    y[3] = float("inf")
    return (x, y), pair(10), pair(10)


class Items(torch.utils.data.Dataset):
    """Three classes of items, named by `classes`; `ragged`: every other target a one-item tensor."""

    def __init__(self, n, classes=None, ragged=False):
        self.x, self.y = torch.randn(n, 3), torch.arange(n) % 3
        self.ragged = ragged
        if classes is not None:
            self.classes = classes

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i:i + 1] if self.ragged and i % 2 else self.y[i]


def classes_twice():
    return Items(30, ["cat", "cat", "dog"]), Items(9), Items(9)


def classes_too_few():
    return Items(30, ["cat", "dog"]), Items(9), Items(9)


def ragged_targets():
    return Items(30), Items(9, ragged=True), Items(9)


def class_only_in_val():
    x, y = pair(10, seed=1)
    y[4] = 7
    return pair(40), (x, y), pair(10)


def exits():
    sys.exit(0)


def raises_generator_exit():
    raise GeneratorExit("a generator's end, raised by hand")


def too_wide(info):
    return nn.Linear(info.input_shape[0], info.n_outputs + 1)


def not_a_tensor(info):
    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(info.input_shape[0], info.n_outputs)

        def forward(self, x):
            return {"logits": self.lin(x)}
    return Pair()


def whole_numbers(info):
    class Rounded(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(info.input_shape[0], info.n_outputs)

        def forward(self, x):
            return self.lin(x).long()
    return Rounded()
'''


@pytest.fixture
def bad_folder(tmp_path):
    """A folder with a module of factories that each get one thing wrong (and the good rings)."""
    (tmp_path / "user_bad.py").write_text(BAD_CODE)
    (tmp_path / "user_rings.py").write_text(USER_CODE)

    def config(data="user_rings:datasets", model=""):
        path = tmp_path / "bad.toml"
        model_text = f'[model]\nkind = "python"\nfactory = "user_bad:{model}"\n' if model else ""
        path.write_text(f'[data]\nsource = "python"\nfactory = "{data}"\n{model_text}[train]\nepochs = 1\n')
        return path

    return config


@pytest.mark.parametrize("factory, words", [
    ("empty_val", ["val split is empty"]),
    ("string_targets", ["train targets are strings", "'dog'"]),
    ("shapes_disagree", ["val input has shape [4]", "train input [3]"]),
    ("nan_inputs", ["val inputs hold NaN", "item 7"]),
    ("inf_targets", ["train targets hold NaN or infinite", "item 3"]),
    ("classes_twice", ["classes name 'cat' more than once"]),
    ("classes_too_few", ["classes name 2 class(es)", "class index 2"]),
    ("ragged_targets", ["val item 1 has a target of shape [1], item 0 []"]),
])
def test_a_factory_returning_bad_data_is_told_what_is_wrong_and_where(bad_folder, factory, words):
    with pytest.raises(UserError) as e:
        load_data(load_config(bad_folder(f"user_bad:{factory}")))
    for word in words:
        assert word in str(e.value)
    assert str(e.value).startswith("data.factory")


@pytest.mark.parametrize("model, words", [
    ("too_wide", ["output for a batch of 2", "has shape [2, 3]", "needs [2, 2]", "one logit per class"]),
    ("not_a_tensor", ["returned a dict"]),
    ("whole_numbers", ["the model's outputs are int64 numbers; a loss needs floating-point outputs"]),
])
def test_a_model_whose_output_does_not_fit_the_task_is_named_before_training(tmp_path, bad_folder, model, words):
    with pytest.raises(UserError) as e:
        Run.prepare(load_config(bad_folder(model=model)), tmp_path / "runs")
    for word in words:
        assert word in str(e.value)
    assert not (tmp_path / "runs").exists()


def test_a_class_only_in_val_or_test_is_named_in_a_warning(bad_folder):
    data = load_data(load_config(bad_folder("user_bad:class_only_in_val")))
    assert data.classes == ["0", "1", "7"]
    assert ("data", "class(es) 7 appear only in the val or test split, never in train: the model cannot learn "
                    "them") in data.warnings
    assert not load_data(load_config(bad_folder("user_rings:datasets"))).warnings


def test_a_factory_that_calls_sys_exit_is_an_error_not_a_quiet_exit_0(tmp_path, bad_folder):
    (tmp_path / "user_exits_on_import.py").write_text("import sys\nsys.exit(0)\n")
    for factory, words in (("user_bad:exits", ["data.factory", "exits() called sys.exit(0)"]),
                           ("user_exits_on_import:f", ["data.factory", "importing 'user_exits_on_import'",
                                                       "sys.exit(0)"]),
                           ("user_bad:raises_generator_exit", ["data.factory", "raises_generator_exit() failed",
                                                               "GeneratorExit: a generator's end"])):
        proc = subprocess.run([sys.executable, "-m", "traintop.tui", "run", str(bad_folder(factory)),
                               "--headless", "--runs-dir", str(tmp_path / "runs")],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        for word in words:
            assert word in proc.stderr
        assert "traintop/engine" not in proc.stderr  # their traceback, not traintop's
        assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_nan_from_a_factory_is_named_as_data_through_the_cli_not_as_a_learning_rate(tmp_path, bad_folder):
    proc = subprocess.run([sys.executable, "-m", "traintop.tui", "run", str(bad_folder("user_bad:nan_inputs")),
                           "--headless", "--runs-dir", str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2 and "val inputs hold NaN" in proc.stderr
    assert "optim.lr" not in proc.stderr and "Traceback" not in proc.stderr
