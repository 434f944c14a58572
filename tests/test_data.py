"""Data: bundled datasets, the seeded stratified split, and CSV preprocessing fitted on train only."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from traintop.engine.config import build_config
from traintop.engine.data import feed, load_data
from traintop.engine.data.tabular import Preprocessor, split_indices
from traintop.engine.errors import UserError
from traintop.engine.runstore import read_events


def csv_data(path, target: str = "label", **data):
    """Load a CSV through the real config and data path."""
    return load_data(build_config({"data": {"source": "csv", "path": str(path), "target": target, **data}}))


def mixed_table(n: int = 300, seed: int = 0) -> pd.DataFrame:
    """Numbers with gaps, a text category, a small-integer column and a text label."""
    rng = np.random.default_rng(seed)
    size = rng.exponential(10.0, n)
    size[rng.choice(n, n // 10, replace=False)] = np.nan
    return pd.DataFrame({
        "size": size,
        "colour": rng.choice(["red", "green", "blue"], n),
        "rooms": rng.integers(1, 5, n),
        "label": np.where(rng.random(n) < 0.5, "cat", "dog"),
    })


# -- bundled datasets -------------------------------------------------------------------------------

@pytest.mark.parametrize("source, task, rows", [
    ("digits", "classification", 1797),
    ("iris", "classification", 150),
    ("wine", "classification", 178),
    ("breast_cancer", "classification", 569),
    ("diabetes", "regression", 442),
    ("moons", "classification", 1000),
])
def test_bundled_dataset_loads_with_its_task_and_a_70_15_15_split(source, task, rows):
    data = load_data(build_config({"data": {"source": source}}))
    s = data.summary()
    assert data.task == task
    assert s["n_train"] + s["n_val"] + s["n_test"] == rows
    for split, fraction in (("train", 0.7), ("val", 0.15), ("test", 0.15)):
        assert abs(s[f"n_{split}"] / rows - fraction) < 0.01, (split, s[f"n_{split}"])
        assert data.x[split].shape == (s[f"n_{split}"], data.input_dim)
        assert data.x[split].dtype == np.float32
        assert np.isfinite(data.x[split]).all()
    if task == "classification":
        assert len(data.classes) >= 2
        assert set(np.unique(data.y["train"])) == set(range(len(data.classes)))


def test_bundled_dataset_refuses_the_other_task():
    with pytest.raises(UserError, match="regression"):
        load_data(build_config({"data": {"source": "diabetes", "task": "classification"}}))


# -- the split --------------------------------------------------------------------------------------

def test_split_covers_every_row_exactly_once():
    train, val, test = split_indices(200, [0.7, 0.15, 0.15], 0, None)
    together = np.concatenate([train, val, test])
    assert sorted(together) == list(range(200))
    assert (len(train), len(val), len(test)) == (140, 30, 30)


def test_same_seed_gives_the_same_split_and_another_seed_a_different_one():
    labels = np.arange(300) % 3
    first = split_indices(300, [0.7, 0.15, 0.15], 1, labels)
    again = split_indices(300, [0.7, 0.15, 0.15], 1, labels)
    other = split_indices(300, [0.7, 0.15, 0.15], 2, labels)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[1], other[1])


def test_same_seed_puts_the_same_rows_in_validation(write_csv):
    rng = np.random.default_rng(3)
    path = write_csv(pd.DataFrame({"x": rng.normal(size=200), "label": rng.choice(["a", "b"], 200)}))
    seed0 = csv_data(path).raw["val"]["x"]
    assert csv_data(path).raw["val"]["x"].equals(seed0)
    seed1 = load_data(build_config({"run": {"seed": 1}, "data": {
        "source": "csv", "path": str(path), "target": "label"}})).raw["val"]["x"]
    assert set(seed1) != set(seed0)


def test_classification_split_keeps_class_proportions(write_csv):
    rng = np.random.default_rng(0)
    n = 400
    labels = np.array(["common"] * 340 + ["rare"] * 60)
    path = write_csv(pd.DataFrame({"x": rng.normal(size=n), "label": rng.permutation(labels)}))
    counts = csv_data(path).summary()["class_counts"]
    overall = 60 / 400
    for split, (common, rare) in counts.items():
        assert abs(rare / (common + rare) - overall) < 0.02, (split, common, rare)


# -- CSV preprocessing ------------------------------------------------------------------------------

def test_missing_numbers_are_filled_with_the_training_split_median(write_csv):
    table = mixed_table()
    data = csv_data(write_csv(table))
    train_median = float(data.raw["train"]["size"].median())
    assert train_median != pytest.approx(float(table["size"].median()), abs=1e-9)  # the test means something
    size = next(c for c in data.preprocess.columns if c["name"] == "size")
    assert size["kind"] == "numeric"
    assert size["fill"] == pytest.approx(train_median)
    # a missing value becomes exactly what the median itself becomes
    gap = data.preprocess.transform(pd.DataFrame({"size": [np.nan], "colour": ["red"], "rooms": [1]}))
    median = data.preprocess.transform(pd.DataFrame({"size": [train_median], "colour": ["red"], "rooms": [1]}))
    assert np.array_equal(gap, median)


def test_numbers_are_standardized_on_the_training_split(write_csv):
    data = csv_data(write_csv(mixed_table()))
    size = data.x["train"][:, data.preprocess.output_names.index("size")]
    assert abs(size.mean()) < 1e-5
    assert abs(size.std() - 1) < 1e-4


def test_text_column_is_one_hot_with_categories_seen_in_training_only(write_csv):
    table = mixed_table(n=200)
    table.loc[:11, "colour"] = [f"only{i}" for i in range(12)]  # a dozen values seen once each
    data = csv_data(write_csv(table))
    colour = next(c for c in data.preprocess.columns if c["name"] == "colour")
    in_train = set(data.raw["train"]["colour"])
    elsewhere = (set(data.raw["val"]["colour"]) | set(data.raw["test"]["colour"])) - in_train
    assert elsewhere  # some once-seen values landed outside the training split
    assert colour["kind"] == "categorical"
    assert set(colour["categories"]) == in_train
    names = data.preprocess.output_names
    assert "colour=red" in names
    assert not any(f"colour={v}" in names for v in elsewhere)
    onehot = data.x["train"][:, [names.index(f"colour={v}") for v in colour["categories"]]]
    assert (onehot.sum(axis=1) == 1).all()


def test_integer_column_with_few_values_is_categorical_and_with_many_is_numeric(write_csv):
    table = mixed_table()
    table["count"] = np.arange(len(table))
    data = csv_data(write_csv(table))
    kinds = data.summary()["feature_types"]
    assert kinds["rooms"] == "categorical"
    assert kinds["count"] == "numeric"
    assert {"rooms=1", "rooms=2", "rooms=3", "rooms=4"} <= set(data.preprocess.output_names)


def test_text_target_is_classification(write_csv):
    data = csv_data(write_csv(mixed_table()))
    assert data.task == "classification"
    assert data.classes == ["cat", "dog"]


def test_float_target_is_regression(write_csv):
    rng = np.random.default_rng(0)
    x = rng.normal(size=150)
    data = csv_data(write_csv(pd.DataFrame({"x": x, "price": 3 * x + rng.normal(size=150)})), target="price")
    assert data.task == "regression"
    assert data.y["train"].dtype == np.float32
    assert data.preprocess.target_mean == pytest.approx(float(data.raw_target["train"].mean()))


@pytest.mark.parametrize("unit", [1e-20, 1e20])
def test_a_regression_in_tiny_or_huge_units_is_learnt_and_scored_in_those_units(write_csv, tmp_path, unit):
    """Standardized by their own spread, however small: targets of 1e-20 were left unscaled (a
    spread under 1e-12 read as constant) and scored 18 orders of magnitude off."""
    from traintop.engine.run import Run

    rng = np.random.default_rng(0)
    x = rng.normal(size=300)
    path = write_csv(pd.DataFrame({"x": x * unit, "y": (2 * x + 0.1 * rng.normal(size=300)) * unit}))
    data = csv_data(path, target="y")
    assert data.preprocess.target_std == pytest.approx(float(data.raw_target["train"].std(ddof=0)))
    assert np.abs(data.y["train"]).max() < 10  # standardized
    cfg = build_config({"data": {"source": "csv", "path": str(path), "target": "y"}, "train": {"epochs": 30}})
    run = Run.prepare(cfg, tmp_path / "runs")
    assert run.train() in ("completed", "early_stopped")
    test = next(e for e in read_events(run.folder.events)[0] if e.event == "test_result").metrics
    assert test["r2"] > 0.9 and test["mae"] < 0.2 * unit, test


@pytest.mark.parametrize("labels, classes", [
    (["01", "1", "001"], ["001", "01", "1"]),  # read as numbers, three classes were one
    (["000", "001", "002"], ["000", "001", "002"]),  # named as the file names them, not 0, 1, 2
    (["1", "2", "3"], ["1", "2", "3"]),
    (["1.0", "2.0", "1"], ["1", "2"]),  # the same numbers written two ways are one class
])
def test_zero_padded_class_labels_keep_their_names_and_stay_apart(tmp_path, labels, classes):
    rng = np.random.default_rng(0)
    path = tmp_path / "codes.csv"
    path.write_text("x1,x2,y\n" + "".join(f"{rng.normal():.3f},{rng.normal():.3f},{labels[i % len(labels)]}\n"
                                           for i in range(60)))
    data = csv_data(path, target="y")
    assert data.task == "classification" and data.classes == classes
    if labels[0].startswith("0"):
        assert sorted(set(data.raw_target["train"])) == classes  # the file's own labels, row by row


def test_small_integer_target_is_classification_in_number_order(write_csv):
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.arange(200) % 11)
    data = csv_data(write_csv(pd.DataFrame({"x": rng.normal(size=200), "grade": labels})), target="grade")
    assert data.task == "classification"
    assert data.classes == [str(i) for i in range(11)]  # 2 before 10


def test_regression_on_a_text_target_is_refused_naming_the_column(write_csv):
    with pytest.raises(UserError, match="'label' is not numeric"):
        csv_data(write_csv(mixed_table()), task="regression")


def test_misspelt_target_suggests_the_column(write_csv):
    with pytest.raises(UserError, match='did you mean "label"'):
        csv_data(write_csv(mixed_table()), target="lable")


def test_rows_without_a_target_are_dropped_with_a_warning(write_csv):
    table = mixed_table()
    table.loc[:4, "label"] = np.nan
    data = csv_data(write_csv(table))
    assert sum(len(data.y[s]) for s in ("train", "val", "test")) == len(table) - 5
    assert any("5 rows" in message for _, message in data.warnings)


# -- the fitted preprocessing, used again at predict time -------------------------------------------

def test_preprocessing_saved_as_json_transforms_rows_identically(write_csv):
    data = csv_data(write_csv(mixed_table()))
    saved = json.loads(json.dumps(data.preprocess.to_json()))
    again = Preprocessor.from_json(saved)
    for split in ("train", "val", "test"):
        assert np.array_equal(again.transform(data.raw[split]), data.x[split])
        assert np.array_equal(again.encode_target(data.raw_target[split]), data.y[split])
    assert saved["inputs"] == data.preprocess.output_names


def test_unseen_category_and_missing_values_transform_without_error(write_csv):
    pre = csv_data(write_csv(mixed_table())).preprocess
    names = pre.output_names
    rows = pd.DataFrame({"size": [np.nan, 4.0], "colour": ["purple", None], "rooms": [9, None]})
    x = pre.transform(rows)
    assert x.shape == (2, len(names))
    assert np.isfinite(x).all()
    colour = [i for i, n in enumerate(names) if n.startswith("colour=")]
    rooms = [i for i, n in enumerate(names) if n.startswith("rooms=")]
    assert (x[0, colour] == 0).all()  # "purple" was never seen: all zeros
    assert (x[0, rooms] == 0).all()  # neither was 9 rooms
    assert x[1, colour].sum() == 1  # a missing category takes the most common one
    assert x[1, rooms].sum() == 1


def test_typed_input_as_text_matches_the_numbers_it_was_trained_on(write_csv):
    pre = csv_data(write_csv(mixed_table())).preprocess
    typed = pre.transform(pd.DataFrame({"size": ["4.5"], "colour": ["red"], "rooms": ["3"]}))
    read = pre.transform(pd.DataFrame({"size": [4.5], "colour": ["red"], "rooms": [3]}))
    assert np.array_equal(typed, read)


def test_missing_feature_column_is_named(write_csv):
    pre = csv_data(write_csv(mixed_table())).preprocess
    with pytest.raises(UserError, match="colour"):
        pre.transform(pd.DataFrame({"size": [1.0], "rooms": [2]}))


# -- leakage ----------------------------------------------------------------------------------------

def test_rows_repeated_across_splits_are_counted_as_leakage(write_csv):
    rng = np.random.default_rng(0)
    distinct = pd.DataFrame({"a": rng.normal(size=8), "b": rng.normal(size=8), "label": ["x", "y"] * 4})
    table = pd.concat([distinct] * 25, ignore_index=True)  # every row 25 times: all of val and test leak
    data = csv_data(write_csv(table))
    s = data.summary()
    assert s["leakage"] == s["n_val"] + s["n_test"]
    leakage = [message for kind, message in data.warnings if kind == "leakage"]
    assert leakage and str(s["leakage"]) in leakage[0]


def test_leakage_counts_only_the_repeated_rows(write_csv):
    rng = np.random.default_rng(1)
    unique = pd.DataFrame({"a": rng.normal(size=200), "label": rng.choice(["x", "y"], 200)})
    table = pd.concat([unique, unique.iloc[:20]], ignore_index=True)  # 20 rows twice
    data = csv_data(write_csv(table))
    train = set(data.raw["train"]["a"])
    val = set(data.raw["val"]["a"])
    expected = sum(a in train for a in data.raw["val"]["a"])
    expected += sum(a in train | val for a in data.raw["test"]["a"])
    assert 0 < expected <= 20
    assert data.summary()["leakage"] == expected


def test_distinct_rows_report_no_leakage(write_csv):
    table = mixed_table()
    table["size"] = np.arange(len(table)) + 0.5  # no gaps: every row is different
    data = csv_data(write_csv(table))
    assert data.summary()["leakage"] == 0
    assert not [m for kind, m in data.warnings if kind == "leakage"]


@pytest.mark.parametrize("gather_bytes", [1, 64 * 8 * 4 * 3, 16 << 20])
def test_in_memory_batches_follow_the_permutation_however_many_rows_are_gathered(monkeypatch, gather_bytes):
    monkeypatch.setattr(feed, "GATHER_BYTES", gather_bytes)
    x = torch.arange(100 * 8, dtype=torch.float32).view(100, 8)
    split = feed.TensorFeed(x, torch.arange(100), torch.device("cpu"))
    order = torch.randperm(100, generator=torch.Generator().manual_seed(3))
    batches = list(split.batches(order, 8, start=2))
    assert len(batches) == 11  # 13 batches of 8 (the last of 4), from the third on
    assert torch.equal(torch.cat([yb for _, yb in batches]), order[16:])
    assert all(torch.equal(xb, x[yb]) for xb, yb in batches)
    assert [len(yb) for _, yb in batches][-2:] == [8, 4]


# -- bad data named as bad data ---------------------------------------------------------------------

def error_of(path, **data) -> str:
    with pytest.raises(UserError) as e:
        csv_data(path, **data)
    return str(e.value)


@pytest.mark.parametrize("bad", ["inf", "-inf", "1e400", "-Infinity"])
def test_an_infinite_or_overflowing_value_names_its_column_and_line(tmp_path, bad):
    rows = [f"{i},{i % 3},{'yes' if i % 2 else 'no'}" for i in range(40)]
    rows[16] = f"16,{bad},no"  # line 18 of the file
    path = tmp_path / "t.csv"
    path.write_text("x,y,label\n" + "\n".join(rows) + "\n")
    message = error_of(path)
    assert "column 'y'" in message and "line 18" in message and str(path) in message
    assert "finite" in message


def test_a_regression_target_near_1e300_is_named_as_the_target(write_csv):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=60), "price": rng.normal(size=60) * 1e300})
    message = error_of(write_csv(frame), target="price")
    assert "data.target" in message and "'price'" in message and "too large" in message


def test_a_regression_target_of_infinity_is_named_as_the_target(write_csv):
    frame = pd.DataFrame({"x": np.arange(60.0), "price": np.r_[np.arange(59.0) * 1.5, np.inf]})
    message = error_of(write_csv(frame), target="price")
    assert "data.target: column 'price'" in message and "line 61" in message


def test_a_feature_too_large_to_standardize_is_named(write_csv):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"mass": rng.normal(size=60) * 1e300, "label": ["a", "b"] * 30})
    message = error_of(write_csv(frame))
    assert "column 'mass'" in message and "too large to standardize" in message


def test_a_value_far_past_the_fitted_scale_is_refused_when_transformed(write_csv):
    pre = csv_data(write_csv(mixed_table())).preprocess
    with pytest.raises(UserError, match=r"row 1, column 'size': 1e\+300 is too large for the scale"):
        pre.transform(pd.DataFrame({"size": [3.0, 1e300], "colour": ["red", "red"], "rooms": [2, 2]}))


def test_a_column_named_twice_is_an_error_naming_it(tmp_path):
    path = tmp_path / "twice.csv"
    path.write_text("a,b,a,label\n" + "".join(f"{i},{i},{i},{'xy'[i % 2]}\n" for i in range(30)))
    message = error_of(path)
    assert "'a'" in message and "more than once" in message and "'a.1'" not in message


def test_a_feature_listed_twice_in_data_features_is_an_error_naming_it(write_csv):
    message = error_of(write_csv(mixed_table()), features=["size", "rooms", "size"])
    assert message == "data.features names 'size' more than once; name each column once"


@pytest.mark.parametrize("extra", [1, 2])
def test_rows_with_more_fields_than_the_header_are_an_error_not_an_index(tmp_path, extra):
    """pandas would take the first column(s) as an index and shift every value one column left."""
    path = tmp_path / "wide.csv"
    path.write_text("a,b,label\n" + "".join(f"{i},{i * 2},{'xy'[i % 2]}" + ",7" * extra + "\n" for i in range(30)))
    message = error_of(path)
    assert "has rows with more fields than its header names columns (3)" in message


@pytest.mark.parametrize("packed", [False, True])
def test_a_row_with_fewer_fields_than_the_header_is_refused_naming_its_line_and_an_empty_field_is_missing(
        tmp_path, packed):
    """A short row would read as missing values in its last columns, as an empty last field does."""
    import gzip

    rows = [f"{i},{i * 2},{'xy'[i % 2]}" for i in range(30)]
    rows[5] = "5,,x"  # an empty field: a missing value
    rows[9] = '"9",18,'  # an empty last field: the label is missing, the row is left out
    text = "a,b,label\n" + "\n".join(rows) + "\n"
    path = tmp_path / ("ok.csv.gz" if packed else "ok.csv")
    path.write_bytes(gzip.compress(text.encode()) if packed else text.encode())
    assert len(csv_data(path).y["train"]) > 0  # read, the unlabelled row left out
    rows[20] = "20,40"
    text = "a,b,label\n" + "\n".join(rows) + "\n"
    path.write_bytes(gzip.compress(text.encode()) if packed else text.encode())
    assert error_of(path).endswith(f"{path}, line 22 has 2 field(s) where the header names 3 columns; give every "
                                   "row one field per column (an empty field for a missing value)")


# -- which columns become inputs --------------------------------------------------------------------

def id_table(n: int = 200) -> pd.DataFrame:
    frame = mixed_table(n)
    frame.insert(0, "customer", [f"cust-{i:05d}" for i in range(n)])
    return frame


def test_an_id_like_text_column_is_left_out_with_a_warning(write_csv):
    data = csv_data(write_csv(id_table()))
    assert "customer" not in data.preprocess.features
    assert not any(name.startswith("customer=") for name in data.preprocess.output_names)
    [message] = [m for kind, m in data.warnings if kind == "data" and "customer" in m]
    assert "looks like an ID" in message and "200 distinct of 200" in message and "data.features" in message
    described = {c["name"]: c for c in data.summary()["columns"]}
    assert described["customer"]["type"] == "left out"
    assert described["customer"]["encoding"] == "left out: ID-like, 200 distinct of 200"


def test_an_id_like_column_named_in_features_is_kept(write_csv):
    data = csv_data(write_csv(id_table()), features=["customer", "size"])
    assert data.preprocess.features == ["customer", "size"]
    assert not [m for _, m in data.warnings if "looks like an ID" in m]


def test_a_text_column_of_repeated_values_or_few_rows_is_not_id_like(write_csv):
    assert "colour" in csv_data(write_csv(mixed_table())).preprocess.features
    few = id_table(15)  # too few rows to tell an id from a small table
    assert "customer" in csv_data(write_csv(few)).preprocess.features


def test_each_column_is_described_with_its_type_missing_count_and_encoding(write_csv):
    frame = mixed_table()
    frame["nothing"] = np.nan
    data = csv_data(write_csv(frame))
    described = {c["name"]: (c["type"], c["missing"], c["encoding"]) for c in data.summary()["columns"]}
    missing = int(frame["size"].isna().sum())
    assert described["size"][:2] == ("numeric", missing) and described["size"][2].startswith("scaled")
    assert described["colour"] == ("categorical", 0, "one-hot, 3 categories")
    assert described["rooms"] == ("categorical", 0, "one-hot, 4 categories")
    assert described["nothing"] == ("left out", len(frame), "left out: no values")
    assert described["label"] == ("target", 0, "2 classes")


# -- raw records at predict time --------------------------------------------------------------------

@pytest.mark.parametrize("value, why", [
    ("abc", "is not a number"),
    ("12 kg", "is not a number"),
    ("1_000", "is not a number"),  # training's reader leaves these out as missing: so must predict
    ("\uff15", "is not a number"),  # a full-width 5
    ("inf", "is not a finite number"),
    ("-inf", "is not a finite number"),
    ("nan", "is not a finite number"),
    ("1e400", "is not a finite number"),
    (float("inf"), "is not a finite number"),
    (10 ** 400, "is too large a number"),
    (True, "is not a number"),
    ([1, 2], "is not a number"),
])
def test_a_raw_value_that_is_not_a_finite_number_is_refused_naming_row_and_column(write_csv, value, why):
    pre = csv_data(write_csv(mixed_table())).preprocess
    rows = pd.DataFrame({"size": [1.0, value], "colour": ["red", "red"], "rooms": [2, 2]})
    with pytest.raises(UserError) as e:
        pre.transform(rows)
    assert "row 1, column 'size'" in str(e.value) and why in str(e.value)


@pytest.mark.parametrize("blank", [None, np.nan, "", "  ", "NA", "null"])
def test_a_blank_raw_value_stays_missing_and_is_imputed_as_in_training(write_csv, blank):
    data = csv_data(write_csv(mixed_table()))
    pre = data.preprocess
    x = pre.transform(pd.DataFrame({"size": [blank], "colour": ["red"], "rooms": [2]}))
    median = next(c for c in pre.columns if c["name"] == "size")["fill"]
    expected = pre.transform(pd.DataFrame({"size": [median], "colour": ["red"], "rooms": [2]}))
    assert np.array_equal(x, expected)


def test_a_column_of_numbers_with_a_few_typos_stays_numeric_and_names_them(tmp_path):
    rows = [f"{i * 0.5},{'xy'[i % 2]}" for i in range(60)]
    rows[9] = "?,x"  # line 11
    path = tmp_path / "typo.csv"
    path.write_text("weight,label\n" + "\n".join(rows) + "\n")
    data = csv_data(path)
    assert data.preprocess.feature_types() == {"weight": "numeric"}
    [message] = [m for kind, m in data.warnings if "weight" in m]
    assert "1 value(s) are not" in message and "'?' at line 11" in message and "missing" in message


def test_blank_labels_are_dropped_like_missing_ones(tmp_path):
    rows = [f"{i},{'xy'[i % 2]}" for i in range(40)]
    rows[5] = "5,  "
    path = tmp_path / "blank.csv"
    path.write_text("x,label\n" + "\n".join(rows) + "\n")
    data = csv_data(path)
    assert sum(len(data.y[s]) for s in ("train", "val", "test")) == 39
    assert any("1 rows without a 'label' value were dropped" in m for _, m in data.warnings)


def test_a_small_table_with_many_classes_is_split_without_stratifying_rather_than_refused():
    labels = np.repeat(np.arange(5), 2)  # ten rows, five classes: too few per part to stratify
    train, val, test = split_indices(10, [0.7, 0.15, 0.15], 0, labels)
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(10))
    assert len(val) and len(test)


@pytest.mark.parametrize("suffix", [".gz", ".bz2", ".xz", ".zip"])
def test_a_compressed_csv_is_read_and_one_that_unpacks_past_the_limit_is_refused_unread(tmp_path, monkeypatch,
                                                                                      suffix):
    """A few kilobytes can unpack to gigabytes: the size is counted as it streams, never held."""
    import bz2
    import gzip
    import lzma
    import zipfile

    import traintop.engine.data as data

    def write(path, text: bytes):
        if suffix == ".zip":
            with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
                archive.writestr("table.csv", text)
        else:
            with {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}[suffix](path, "wb") as f:
                f.write(text)

    small = tmp_path / f"small.csv{suffix}"
    write(small, b"a,b,y\n" + b"".join(f"{i % 7},{i % 5},{i % 2}\n".encode() for i in range(300)))
    assert data.read_csv_file(small, "data.path").shape == (300, 3)
    monkeypatch.setattr(data, "UNPACKED_LIMIT", 1 << 20)
    bomb = tmp_path / f"bomb.csv{suffix}"
    write(bomb, b"a,b,y\n" + b"0,0,0\n" * 400_000)  # 2.4 MB of CSV in a few kilobytes
    assert bomb.stat().st_size < 100_000
    with pytest.raises(UserError, match=r"data.path: .*bomb.csv.* unpacks to more than 1 MiB of CSV"):
        data.read_csv_file(bomb, "data.path")
