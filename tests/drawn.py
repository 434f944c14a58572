"""Drawn test data: folders of shape images and CSVs of sentences, generated at test time."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SHAPES = ("circle", "square", "triangle")


def draw_shape(kind: str, rng: np.random.Generator, size: int = 32):
    """One PIL image of `kind` at a random size, position and colour, on a random background."""
    from PIL import Image, ImageDraw

    background = tuple(int(v) for v in rng.integers(0, 256, 3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    colour = tuple(int((b + rng.integers(80, 176)) % 256) for b in background)  # stands out from it
    r = rng.uniform(0.2, 0.4) * size
    cx, cy = rng.uniform(r, size - r, 2)
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif kind == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    return image


def shapes_folder(root: Path, per_class: int = 100, seed: int = 0, size: int = 32,
                  shapes=SHAPES) -> Path:
    """A folder with one sub-folder per shape, `per_class` PNGs in each."""
    rng = np.random.default_rng(seed)
    for kind in shapes:
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            draw_shape(kind, rng, size).save(root / kind / f"{i:04d}.png")
    return root


TOPICS = {
    "sport": "match goal team score player coach league win season referee stadium",
    "food": "recipe bake flour sugar oven taste dinner spicy soup bread salad",
    "tech": "laptop software update battery screen app code server chip network",
}
FILLER = "the a of and to in is was it this that with for on very really quite".split()


def sentences_frame(n: int = 600, seed: int = 0):
    """Sentences whose topic shows only in their words, with a numeric column that carries no signal."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    topics = list(TOPICS)
    rows = []
    for _ in range(n):
        topic = topics[rng.integers(len(topics))]
        words = list(rng.choice(TOPICS[topic].split(), rng.integers(2, 5))) + \
            list(rng.choice(FILLER, rng.integers(3, 9)))
        rng.shuffle(words)
        text = " ".join(words)
        rows.append({"review": text.capitalize() + rng.choice([".", "!", "?"]),
                     "stars": int(rng.integers(1, 6)), "topic": topic})
    return pd.DataFrame(rows)
