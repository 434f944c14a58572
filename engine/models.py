"""Models and losses built from the config and the data's shape."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .config import Config
from .errors import UserError


@dataclass(frozen=True)
class DataInfo:
    """What a model needs to know of the data; a `python` model's factory is called with it."""

    input_shape: tuple[int, ...]  # one sample, e.g. (64,) or (3, 32, 32)
    n_outputs: int  # the model's output width: classes for cross-entropy, else 1
    task: str = "classification"
    classes: tuple[str, ...] = ()
    feature_names: tuple[str, ...] = ()
    vocab_size: int = 0  # text: embedding rows (words, padding 0, out-of-vocabulary 1)
    text_tokens: int = 0  # text: the last this many input columns are token indices
    kind: str = "tabular"  # the data's kind: tabular | text | image | tensor
    input_dtype: str = "float32"  # float32, or int64 for a factory's integer inputs (token ids)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @classmethod
    def of(cls, preprocess, n_outputs: int) -> DataInfo:
        """The info of data prepared by `preprocess` (a live Dataset's, or one read from preprocess.json)."""
        return cls(input_shape=tuple(preprocess.input_shape), n_outputs=n_outputs, task=preprocess.task,
                   classes=tuple(preprocess.classes), feature_names=tuple(preprocess.features),
                   vocab_size=preprocess.vocab_size, text_tokens=getattr(preprocess, "max_tokens", 0),
                   kind=preprocess.kind, input_dtype=getattr(preprocess, "dtype", "float32"))


def _mlp(width: int, hidden: list[int], dropout: float, n_outputs: int) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = h
    return layers + [nn.Linear(width, n_outputs)]


# The built-in models are for tables, images and short texts: past this many parameters (1 GB of
# float32 weights, 4 GB with gradients and Adam's state) a config is a slip, like two layers of
# 65536 (4.3 billion), not a plan; it would exhaust memory before saying so.
MAX_PARAMS = 2 ** 28


def build_model(cfg: Config, info: DataInfo | int, n_outputs: int | None = None) -> nn.Module:
    """The configured model for the data `info` describes (or for `info` inputs and `n_outputs` outputs)."""
    if isinstance(info, int):
        info = DataInfo(input_shape=(info,), n_outputs=n_outputs)
    m = cfg.model
    if m.kind == "python":
        return _python_model(cfg, info)
    with torch.device("meta"):  # shapes only: nothing allocated, no random numbers drawn
        n = sum(p.numel() for p in _built_in(cfg, info).parameters())
    if n > MAX_PARAMS:
        widths = f"model.hidden = {m.hidden}" + (f" and model.channels = {m.channels}" if m.kind == "cnn" else "")
        vocab = f" over a vocabulary of {info.vocab_size:,} words" if m.kind == "text" else ""
        raise UserError(f"model.kind = {m.kind!r} with {widths}{vocab} makes a model of {n:,} parameters; "
                        f"the built-in models allow up to {MAX_PARAMS:,}: use narrower layers")
    return _built_in(cfg, info)


def _built_in(cfg: Config, info: DataInfo) -> nn.Module:
    m = cfg.model
    if info.kind == "text" and m.kind != "text":
        raise UserError(f"model.kind = {m.kind!r} cannot read a text column (data.text); "
                        "use model.kind = \"text\" or \"python\"")
    if m.kind == "text":
        if info.kind != "text":
            raise UserError("model.kind = \"text\" needs a text column: set data.text to the CSV column "
                            "of free text")
        return TextModel(info, m.hidden, m.dropout)
    if info.input_dtype == "int64":
        raise UserError(f"model.kind = {m.kind!r} takes floating-point inputs, and data.factory gives integers "
                        "(int64): return floats from the factory (x.float(); 8-bit images x.float() / 255), or, "
                        "for token ids, model.kind = \"python\" with an embedding of your own")
    if not info.input_shape:
        raise UserError(f"model.kind = {m.kind!r} takes inputs of at least one dimension, and data.factory gives "
                        "single numbers (shape []): give each input the shape [1] (x.unsqueeze(-1))")
    if m.kind == "cnn":
        if len(info.input_shape) != 3:
            raise UserError(f"model.kind = \"cnn\" needs images (channels, height, width); this data's "
                            f"inputs have shape {list(info.input_shape)}; use mlp or linear")
        return ConvNet(info, m.channels, m.hidden, m.dropout)
    width = math.prod(info.input_shape)
    flatten = [nn.Flatten()] if len(info.input_shape) > 1 else []
    if m.kind == "linear":
        return nn.Sequential(*flatten, nn.Linear(width, info.n_outputs))
    return nn.Sequential(*flatten, *_mlp(width, m.hidden, m.dropout, info.n_outputs))


class ConvNet(nn.Module):
    """Conv blocks (3x3 conv, batch norm, ReLU, 2x2 max pool) per `channels`, then an MLP head."""

    def __init__(self, info: DataInfo, channels: list[int], hidden: list[int], dropout: float):
        super().__init__()
        c, h, w = info.input_shape
        blocks: list[nn.Module] = []
        for out in channels:
            blocks += [nn.Conv2d(c, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
            if min(h, w) >= 2:  # a map down to one pixel is not pooled further
                blocks.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            c = out
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Flatten(), *_mlp(c * h * w, hidden, dropout, info.n_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class TextModel(nn.Module):
    """Mean of word embeddings (an embedding bag of `hidden[0]` wide) beside the table's other
    inputs, then an MLP of `hidden[1:]`."""

    def __init__(self, info: DataInfo, hidden: list[int], dropout: float):
        super().__init__()
        dim = hidden[0] if hidden else 64
        self.n_table = math.prod(info.input_shape) - info.text_tokens
        self.embed = nn.EmbeddingBag(info.vocab_size, dim, mode="mean", padding_idx=0)
        self.head = nn.Sequential(*_mlp(dim + self.n_table, hidden[1:], dropout, info.n_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        words = self.embed(x[:, self.n_table:].long())
        return self.head(torch.cat([words, x[:, :self.n_table]], dim=1))


def _python_model(cfg: Config, info: DataInfo) -> nn.Module:
    from .factory import call_factory, load_factory

    if not cfg.model.factory:
        raise UserError('model.factory is empty; model.kind = "python" needs "module:function"')
    fn = load_factory(cfg.model.factory, "model.factory", cfg.base_dir)
    model = call_factory(fn, "model.factory", info)
    if not isinstance(model, nn.Module):
        raise UserError(f"model.factory {cfg.model.factory!r} returned a {type(model).__name__}; "
                        "it must return a torch.nn.Module")
    if not any(p.requires_grad for p in model.parameters()):
        raise UserError(f"model.factory {cfg.model.factory!r} returned a model with no trainable parameters "
                        "(none requires grad): there is nothing to train")
    _check_outputs(model, info)
    return model


def _check_outputs(model: nn.Module, info: DataInfo) -> None:
    """A user's model must answer a batch with one row of `n_outputs` per input: a wrong width is
    named now, not met as a shape error (or a silently wrong loss) in the first step."""
    from .factory import THEIRS, their_traceback

    x = torch.zeros(2, *info.input_shape, dtype=torch.int64 if info.input_dtype == "int64" else torch.float32)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except THEIRS as e:  # their forward, their error
        raise UserError(f"model.factory: the model's forward failed on a batch of 2 inputs of shape "
                        f"{list(info.input_shape)} ({x.dtype}):\n{their_traceback(e)}") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise UserError(f"model.factory: the model returned a {type(out).__name__} for a batch of inputs; "
                        "its forward must return a tensor of outputs")
    if not out.is_floating_point():
        raise UserError(f"model.factory: the model's outputs are {str(out.dtype).removeprefix('torch.')} numbers; "
                        "a loss needs floating-point outputs (logits or values) with a gradient: return them "
                        "before any rounding or .long()")
    want = [2, info.n_outputs]
    if list(out.shape) != want:
        if info.task != "classification":
            why = "one value per input, for a regression"
        elif info.n_outputs == 1:
            why = "one logit per input, for bce"
        else:
            why = f"one logit per class ({', '.join(info.classes[:5])}{', ...' if info.n_classes > 5 else ''})"
        raise UserError(f"model.factory: the model's output for a batch of 2 inputs of shape "
                        f"{list(info.input_shape)} has shape {list(out.shape)}; this data needs {want}: {why}; "
                        "use info.n_outputs for the last layer's width")


LOSSES = {  # functional forms: the loss is computed every step, and a module call costs more
    "mse": F.mse_loss,
    "l1": F.l1_loss,
    "huber": F.huber_loss,
    "cross_entropy": F.cross_entropy,
    "bce": F.binary_cross_entropy_with_logits,
}


def loss_name(cfg: Config, task: str, n_classes: int) -> str:
    """The loss to train with: named in the config, or chosen by the task."""
    name = cfg.train.loss
    if name == "auto":
        return "cross_entropy" if task == "classification" else "mse"
    if task == "regression" and name in ("cross_entropy", "bce"):
        raise UserError(f"train.loss = {name!r} needs classes, but the data is a regression task; "
                        "allowed for regression: mse, l1, huber")
    if task == "classification" and name in ("mse", "l1", "huber"):
        raise UserError(f"train.loss = {name!r} is for regression, but the data is a classification "
                        "task; allowed: cross_entropy, bce")
    if name == "bce" and n_classes != 2:
        raise UserError(f"train.loss = \"bce\" needs two classes; the data has {n_classes}; "
                        "use cross_entropy")
    return name


def n_model_outputs(loss: str, task: str, n_classes: int) -> int:
    """One logit for bce and regression, one per class for cross-entropy."""
    return n_classes if loss == "cross_entropy" else 1


class Objective:
    """The loss in the model's terms, and how outputs become predictions and probabilities."""

    def __init__(self, name: str):
        self.name = name
        self.fn = LOSSES[name]

    def __call__(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.name == "bce":
            return self.fn(out.squeeze(1), y.to(out.dtype))
        if self.name in ("mse", "l1", "huber"):
            return self.fn(out.squeeze(1), y)
        return self.fn(out, y)

    def probabilities(self, out: torch.Tensor) -> torch.Tensor:
        """Class probabilities, one column per class."""
        if self.name == "bce":
            p = torch.sigmoid(out.squeeze(1))
            return torch.stack([1 - p, p], dim=1)
        return torch.softmax(out, dim=1)


def describe_module(module: nn.Module) -> str:
    """What a layer is, in a few words: `Linear 64→128`, `Conv2d 3→32 3×3`, `Embedding 5000×64`."""
    kind = type(module).__name__
    if isinstance(module, nn.Linear):
        return f"{kind} {module.in_features}→{module.out_features}"
    if isinstance(module, nn.modules.conv._ConvNd):
        size = "×".join(str(k) for k in module.kernel_size)
        return f"{kind} {module.in_channels}→{module.out_channels} {size}"
    if isinstance(module, nn.Embedding):
        return f"{kind} {module.num_embeddings}×{module.embedding_dim}"
    if isinstance(module, nn.modules.batchnorm._NormBase):
        return f"{kind} {module.num_features}"
    if isinstance(module, nn.LayerNorm):
        return f"{kind} {'×'.join(str(d) for d in module.normalized_shape)}"
    if isinstance(module, nn.RNNBase):
        return f"{kind} {module.input_size}→{module.hidden_size}"
    return kind


def describe_layers(model: nn.Module) -> list[dict]:
    """Every module that holds trainable parameters of its own: its name, what it is, its size,
    and the names of its parameters (the keys of the per-layer gradient norms)."""
    layers = []
    for name, module in model.named_modules():
        own = [(n, p) for n, p in module.named_parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        layers.append({"name": name or type(module).__name__, "describe": describe_module(module),
                       "params": sum(p.numel() for _, p in own),
                       "parameters": [f"{name}.{n}" if name else n for n, _ in own]})
    return layers
