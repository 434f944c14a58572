"""A free-text column of a CSV: lower-case word tokens, a vocabulary fitted on the training split.

A text row's model input is one float vector: the table's other encoded columns first, then
`max_tokens` token indices (index 0 pads, 1 is a word outside the vocabulary; float32 holds
indices exactly up to 2**24). The `text` model reads the indices through an embedding bag.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..errors import UserError
from .tabular import Preprocessor

PAD, OOV = 0, 1
MAX_TOKENS = 256  # longer texts are cut to their first this many words
WORD = re.compile(r"\w+")


def tokenize(text: Any) -> list[str]:
    """Lower-case word tokens; a missing value has none."""
    if text is None or (isinstance(text, float) and np.isnan(text)):
        return []
    return WORD.findall(str(text).lower())


@dataclass
class TextPreprocessor:
    """The vocabulary fitted on the training texts, around the table's own preprocessing."""

    text: str  # the text column
    vocab: list[str]  # index i + 2 is vocab[i]
    max_tokens: int
    table: Preprocessor  # the other feature columns and the target

    kind = "text"

    @property
    def task(self) -> str:
        return self.table.task

    @property
    def classes(self) -> list[str]:
        return self.table.classes

    @property
    def target(self) -> str:
        return self.table.target

    @property
    def target_mean(self) -> float:
        return self.table.target_mean

    @property
    def target_std(self) -> float:
        return self.table.target_std

    @property
    def features(self) -> list[str]:
        return [self.text, *self.table.features]

    @property
    def vocab_size(self) -> int:
        """Embedding rows: the words, plus padding and out-of-vocabulary."""
        return len(self.vocab) + 2

    @property
    def n_table_inputs(self) -> int:
        return len(self.table.output_names)

    @property
    def input_shape(self) -> list[int]:
        return [self.n_table_inputs + self.max_tokens]

    def feature_types(self) -> dict[str, str]:
        return {self.text: "text", **self.table.feature_types()}

    @classmethod
    def fit(cls, text: str, train_texts: pd.Series, table: Preprocessor, min_freq: int,
            max_vocab: int) -> TextPreprocessor:
        """The vocabulary: words seen at least `min_freq` times in training, the `max_vocab` most frequent."""
        tokens = [tokenize(t) for t in train_texts]
        counts = Counter(w for row in tokens for w in row)
        words = sorted((w for w, n in counts.items() if n >= min_freq), key=lambda w: (-counts[w], w))
        longest = max((len(row) for row in tokens), default=1)
        return cls(text=text, vocab=words[:max_vocab], max_tokens=max(1, min(MAX_TOKENS, longest)), table=table)

    def token_ids(self, texts) -> np.ndarray:
        """Token indices (rows, max_tokens), padded with 0; unknown words are 1."""
        index = {w: i + 2 for i, w in enumerate(self.vocab)}
        out = np.zeros((len(texts), self.max_tokens), dtype=np.float32)
        for r, text in enumerate(texts):
            ids = [index.get(w, OOV) for w in tokenize(text)[:self.max_tokens]]
            out[r, :len(ids)] = ids
        return out

    def transform(self, rows: pd.DataFrame) -> np.ndarray:
        """Raw rows (the text column and the other features) to model inputs."""
        if self.text not in rows.columns:
            raise UserError(f"input is missing the text column {self.text!r}; "
                            f"the model was trained on: {', '.join(self.features)}")
        return np.concatenate([self.table.transform(rows), self.token_ids(list(rows[self.text]))], axis=1)

    def encode_target(self, y: pd.Series) -> np.ndarray:
        return self.table.encode_target(y)

    def decode_value(self, scaled: np.ndarray) -> np.ndarray:
        return self.table.decode_value(scaled)

    def preview(self, x: np.ndarray) -> dict[str, Any]:
        """Nothing to add: a text row is shown as its raw record."""
        return {}

    def to_json(self) -> dict[str, Any]:
        table = self.table.to_json()
        return {**table, "kind": self.kind, "text": self.text, "vocab": self.vocab,
                "max_tokens": self.max_tokens, "pad_index": PAD, "oov_index": OOV,
                "vocab_size": self.vocab_size, "table_inputs": table["inputs"], "input_shape": self.input_shape}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> TextPreprocessor:
        return cls(text=obj["text"], vocab=obj["vocab"], max_tokens=obj["max_tokens"],
                   table=Preprocessor.from_json(obj))
