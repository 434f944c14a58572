"""A text column: words to indices with a vocabulary from the training split, learned by the text model."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from drawn import sentences_frame
from traintop.engine.config import build_config
from traintop.engine.data import load_data, load_preprocessor
from traintop.engine.data.text import OOV, PAD, tokenize
from traintop.engine.errors import UserError
from traintop.engine.run import Run


def text_config(path, model="text", **data):
    return build_config({
        "data": {"source": "csv", "path": str(path), "target": "topic", "text": "review", "batch_size": 32, **data},
        "model": {"kind": model, "hidden": [32, 32]}, "optim": {"lr": 0.01},
        "train": {"epochs": 10}, "early_stopping": {"enabled": False}})


def test_text_model_learns_topics_from_the_words_to_90_percent(tmp_path, write_csv):
    path = write_csv(sentences_frame(600, seed=0))
    run = Run.prepare(text_config(path), tmp_path / "runs")
    assert run.train() == "completed"
    events = [json.loads(line) for line in run.folder.events.read_text().splitlines()]
    test = next(e for e in events if e["event"] == "test_result")
    assert test["metrics"]["accuracy"] >= 0.9, test
    data = next(e for e in events if e["event"] == "run_started")["data"]
    assert data["feature_types"] == {"review": "text", "stars": "categorical"}
    assert data["vocab_size"] > 30


def test_tokens_are_lower_case_words():
    assert tokenize("The Match, it WAS great!! 3-1") == ["the", "match", "it", "was", "great", "3", "1"]
    assert tokenize(None) == [] and tokenize(float("nan")) == []


def test_vocabulary_comes_from_the_training_split_with_min_freq_and_max_vocab(write_csv):
    frame = sentences_frame(300, seed=1)
    frame.loc[:, "review"] = frame["review"] + " common"
    path = write_csv(frame)
    data = load_data(text_config(path, min_freq=2, max_vocab=10))
    pre = data.preprocess
    assert len(pre.vocab) == 10 and pre.vocab_size == 12 and pre.vocab[0] == "common"
    counts = pd.Series([w for t in data.raw["train"]["review"] for w in tokenize(t)]).value_counts()
    assert all(counts[w] >= 2 for w in pre.vocab)
    ids = pre.token_ids(["common zzzunseen", ""])
    assert ids[0, 0] == pre.vocab.index("common") + 2 and ids[0, 1] == OOV
    assert (ids[1] == PAD).all() and (ids[0, 2:] == PAD).all()


def test_text_sits_beside_the_tables_other_columns_and_round_trips_through_json(write_csv):
    data = load_data(text_config(write_csv(sentences_frame(200)), model="text"))
    pre = data.preprocess
    n_table = len(pre.table.output_names)
    assert n_table == 5  # stars, one-hot
    assert data.x["train"].shape[1] == n_table + pre.max_tokens
    again = load_preprocessor(json.loads(json.dumps(pre.to_json())))
    for split in ("train", "test"):
        assert np.array_equal(again.transform(data.raw[split]), data.x[split])


def test_a_text_column_needs_the_text_or_a_python_model(tmp_path, write_csv):
    path = write_csv(sentences_frame(100))
    with pytest.raises(UserError, match='cannot read a text column'):
        Run.prepare(text_config(path, model="mlp"), tmp_path / "runs")
    with pytest.raises(UserError, match="data.text: column 'reviews' is not in"):
        load_data(text_config(path, text="reviews"))


def test_a_text_column_with_no_words_to_learn_is_refused_when_it_is_all_there_is(write_csv):
    """Empty texts, or words all rarer than min_freq: with no other column, nothing to learn from."""
    frame = sentences_frame(100)[["review", "topic"]]
    with pytest.raises(UserError, match="column 'review' has no word seen at least data.min_freq = 1"):
        load_data(text_config(write_csv(frame.assign(review="")), model="text"))
    with pytest.raises(UserError, match="data.min_freq = 100000 time"):
        load_data(text_config(write_csv(frame), model="text", min_freq=100000))
    assert load_data(text_config(write_csv(sentences_frame(100).assign(review="")), model="text"))  # stars
