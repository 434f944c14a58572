"""The inference tab's pictures and tables, as text: a held-out sample (an image drawn in
half-blocks, or a record's fields), the model's answer, and the whole validation split's summary.
No widgets here: tui/inference.py shows them."""

from __future__ import annotations

import math
from typing import Any

from rich.text import Text

from .literal import LiteralText
from .terminal import terminal_safe

TOP_CLASSES = 5
BAR = 24  # width of a probability bar
IMAGE_COLUMNS = 24  # a small image is scaled up to about this many characters wide


def image_pixels(sample: dict[str, Any], data: dict[str, Any]) -> list[list[float]] | None:
    """A held-out sample's picture as rows of grey levels from 0 to 1, or None if it is no image.

    Image runs send `pixels` (rows of 0..255); a table whose features are an image's pixels
    (`image_shape` in the run's data, as for digits) is drawn from its feature values.
    """
    if isinstance(sample.get("pixels"), list):
        rows = sample["pixels"]
        return [[float(v) / 255.0 for v in row] for row in rows]
    shape = data.get("image_shape")
    features = data.get("features") or []
    if not shape or len(shape) != 2 or shape[0] * shape[1] != len(features):
        return None
    values = [sample.get(f) for f in features]
    if any(not isinstance(v, (int, float)) for v in values):
        return None
    top = max(max(values), 1e-12)
    h, w = shape
    return [[values[r * w + c] / top for c in range(w)] for r in range(h)]


def draw_image(pixels: list[list[float]], no_color: bool = False) -> Text:
    """Grey levels as half-block characters (two pixel rows per line), scaled up to be legible."""
    h, w = len(pixels), len(pixels[0]) if pixels else 0
    scale = max(1, IMAGE_COLUMNS // max(w, 1))
    big = [[pixels[r // scale][c // scale] for c in range(w * scale)] for r in range(h * scale)]
    if len(big) % 2:
        big.append([0.0] * (w * scale))
    text = Text()
    shades = " ░▒▓█"
    for r in range(0, len(big), 2):
        for top, bottom in zip(big[r], big[r + 1]):
            if no_color:
                text.append(shades[min(4, int((top + bottom) / 2 * 4.999))])
            else:
                fg, bg = _grey(top), _grey(bottom)
                text.append("▀", style=f"{fg} on {bg}")
        text.append("\n")
    return text


def _grey(level: float) -> str:
    v = max(0, min(255, int(round(level * 255))))
    return f"rgb({v},{v},{v})"


def record_table(record: dict[str, Any], limit: int = 40) -> Text:
    """A raw record as `feature  value` lines, as the user's file had it."""
    text = LiteralText()
    names = [terminal_safe(str(k)) for k in record]  # escaped before measuring, so columns line up
    width = min(22, max(map(len, names), default=0))
    for i, (name, v) in enumerate(zip(names, record.values())):
        if i == limit:
            text.append(f"… {len(record) - limit} more features\n", style="dim")
            break
        value = "(missing)" if v is None else (f"{v:.6g}" if isinstance(v, float) else terminal_safe(str(v)))
        text.append(f"{name[:width]:<{width}}  ", style="bold")
        text.append(value[:60] + "\n", style="dim" if v is None else "")
    return text


def answer_text(answer: dict[str, Any], no_color: bool = False) -> Text:
    """The model's answer: the true and predicted label (right or wrong), and the top classes."""
    text = LiteralText()
    true = answer.get("true")
    if "probabilities" in answer:
        label = answer["label"]
        if "true" in answer:
            text.append("true       ", style="bold").append(f"{true}\n")
        text.append("predicted  ", style="bold").append(f"{label}")
        if "true" in answer:
            right = str(label) == str(true)
            text.append("  ✓ right" if right else "  ✗ wrong",
                        style="" if no_color else ("bold green" if right else "bold red"))
        text.append("\n\n")
        ranked = sorted(answer["probabilities"].items(), key=lambda kv: -kv[1])[:TOP_CLASSES]
        name_width = min(14, max(len(terminal_safe(str(c))) for c, _ in ranked))
        for c, p in ranked:
            filled = p * BAR
            bar = "█" * int(filled) + (" ▏▎▍▌▋▊▉"[int((filled % 1) * 8)] if filled < BAR else "")
            style = "" if no_color else ("green" if str(c) == str(true) else "cyan")
            name = terminal_safe(str(c))[:name_width]
            text.append(f"{name:>{name_width}} ").append(f"{bar:<{BAR}}", style=style)
            text.append(f" {p * 100:5.1f}%\n")
    else:
        value = answer["value"]
        text.append("predicted  ", style="bold").append(f"{value:.6g}\n")
        if true is not None:
            text.append("true       ", style="bold").append(f"{true:.6g}\n")
            text.append("error      ", style="bold").append(f"{value - true:+.4g}\n")
    return text


def summary_text(outputs: list[dict[str, Any]], classes: list[str]) -> Text:
    """The whole validation split at once: accuracy and where the mistakes go, or MAE and RMSE."""
    text = LiteralText()
    if not outputs:
        return text.append("no validation samples")
    if "probabilities" not in outputs[0]:
        errors = [o["value"] - o["true"] for o in outputs if o.get("true") is not None]
        mae = sum(abs(e) for e in errors) / len(errors)
        rmse = math.sqrt(sum(e * e for e in errors) / len(errors))
        return text.append(f"validation split, {len(errors)} samples\nMAE   {mae:.4g}\nRMSE  {rmse:.4g}\n")
    right = sum(str(o["label"]) == str(o["true"]) for o in outputs)
    text.append(f"validation split: {right} of {len(outputs)} right ({right / len(outputs):.1%})\n\n",
                style="bold")
    confusions: dict[tuple[str, str], int] = {}
    for o in outputs:
        if str(o["label"]) != str(o["true"]):
            key = (str(o["true"]), str(o["label"]))
            confusions[key] = confusions.get(key, 0) + 1
    if len(classes) <= 10:
        names = {c: terminal_safe(c) for c in classes}  # escaped before measuring, so columns line up
        counts = {(str(o["true"]), str(o["label"])): 0 for o in outputs}
        for o in outputs:
            counts[(str(o["true"]), str(o["label"]))] += 1
        # as narrow as the names and counts allow (at most 8 wide): ten classes fit beside the samples at 80×24
        width = min(8, max(2, *map(len, names.values()), *(len(str(n)) for n in counts.values())))
        label = max(width + 1, len("true↓") + 1)  # the row names' column, its heading included
        text.append(" " * label + " pred→\n", style="dim")  # above the columns: the table stays its own width
        text.append(f"{'true↓':>{label}}" + "".join(f"{names[c][:width]:>{width + 1}}" for c in classes)
                    + "\n", style="dim")
        for t in classes:
            text.append(f"{names[t][:width]:>{label}}", style="bold")
            for p in classes:
                n = counts.get((t, p), 0)
                text.append(f"{n or '·':>{width + 1}}", style="green" if t == p and n else ("red" if n else "dim"))
            text.append("\n")
    elif confusions:
        text.append("most confused (true → predicted):\n")
        for (t, p), n in sorted(confusions.items(), key=lambda kv: -kv[1])[:8]:
            text.append(f"  {t} → {p}: {n}\n")
    return text
