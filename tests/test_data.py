"""Reading data files of every supported format, column mapping, label names, the seeded validation carve,
the tokenization cache, and the deterministic batch plans of `adapt.batching`."""

from __future__ import annotations

import gzip
import json
import random

import pytest
import torch
from conftest import sentiment_rows, write_table
from datasets import Dataset

from adapt import batching, data
from adapt.errors import AdaptError
from adapt.recipe import resolve_recipe
from adapt.tasks import get_task


def classification_task(train, *overrides):
    return get_task(resolve_recipe("sentiment", [("data.train", str(train)), ("tracking", []), *overrides]))


# ---- file formats ---------------------------------------------------------------------------------
def test_csv_keeps_quoted_commas_and_quotes(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('text,label\n"slow, but ""worth it""",positive\nplain,negative\n', encoding="utf-8")
    ds = data.read_table(path)
    assert ds.column_names == ["text", "label"]
    assert ds.to_list() == [{"text": 'slow, but "worth it"', "label": "positive"},
                            {"text": "plain", "label": "negative"}]


def test_tsv_is_unquoted_like_glue(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text('sentence\tlabel\nit \'s a "great" film \t1\n"quoted start and no end\t0\n', encoding="utf-8")
    ds = data.read_table(path)
    assert ds["sentence"] == ['it \'s a "great" film ', '"quoted start and no end']
    assert ds["label"] == ["1", "0"]


def test_json_list_and_wrapped_data(tmp_path):
    rows = [{"text": "good", "label": "positive"}, {"text": "bad", "label": "negative"}]
    (tmp_path / "list.json").write_text(json.dumps(rows))
    (tmp_path / "wrapped.json").write_text(json.dumps({"version": 1, "data": rows}))
    assert data.read_table(tmp_path / "list.json").to_list() == rows
    assert data.read_table(tmp_path / "wrapped.json").to_list() == rows


def test_jsonl_skips_blank_lines_and_names_a_bad_line(tmp_path):
    good = tmp_path / "d.jsonl"
    good.write_text('{"text": "a", "label": 1}\n\n{"text": "b", "label": 0}\n')
    assert data.read_table(good).to_list() == [{"text": "a", "label": 1}, {"text": "b", "label": 0}]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": 1}\n{"text": "b", label: 0}\n')
    with pytest.raises(AdaptError, match=rf"{bad}: line 2 is not valid JSON .*; fix or remove that line"):
        data.read_table(bad)
    # a .json file holding JSON Lines is read as JSON Lines
    lines = tmp_path / "lines.json"
    lines.write_text('{"text": "a"}\n{"text": "b"}\n')
    assert data.read_table(lines)["text"] == ["a", "b"]
    broken = tmp_path / "broken.json"
    broken.write_text('[\n{"text": "a"},\n{"text": }\n]')
    with pytest.raises(AdaptError, match=rf"{broken}: line 3 is not valid JSON \(Expecting value\)"):
        data.read_table(broken)


def test_parquet(tmp_path):
    import pandas as pd

    frame = pd.DataFrame({"text": ["good", "bad", "fine"], "label": [1, 0, 1]})
    frame.to_parquet(tmp_path / "d.parquet", index=False)
    ds = data.read_table(tmp_path / "d.parquet")
    assert ds.column_names == ["text", "label"] and ds.to_list() == frame.to_dict("records")


def test_compressed_files(tmp_path):
    body = 'sentence\tlabel\na "quoted" word\t1\nplain\t0\n'.encode()
    with gzip.open(tmp_path / "train.tsv.gz", "wb") as handle:
        handle.write(body)
    ds = data.read_table(tmp_path / "train.tsv.gz")
    assert ds.to_list() == [{"sentence": 'a "quoted" word', "label": "1"}, {"sentence": "plain", "label": "0"}]
    assert data.split_suffix(tmp_path / "train.tsv.gz") == (".tsv", ".gz")
    assert data.split_suffix(tmp_path / "a.b.csv") == (".csv", "")


def test_bad_files_are_named(tmp_path):
    with pytest.raises(AdaptError, match=r"unsupported file type '\.xlsx'; use one of \.csv, \.tsv"):
        data.read_table(tmp_path / "d.xlsx")
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("text,label\nok,positive\ntoo,many,fields\n")
    with pytest.raises(AdaptError, match=rf"{ragged}: line 3 has 3 fields but the header has 2; fix that line"):
        data.read_table(ragged)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(AdaptError, match=rf"{empty}: the file is empty; it needs a header line"):
        data.read_table(empty)
    not_utf8 = tmp_path / "latin1.tsv"
    not_utf8.write_bytes("text\tlabel\ncaf\u00e9\t1\n".encode("latin-1"))
    with pytest.raises(AdaptError, match=rf"{not_utf8}: line 2 is not valid UTF-8 \(byte 0xe9\); re-save the file as UTF-8"):
        data.read_table(not_utf8)


def test_utf8_byte_order_mark_is_dropped(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("text,label\ncaf\u00e9,positive\n".encode("utf-8-sig"))
    assert data.read_table(path).to_list() == [{"text": "caf\u00e9", "label": "positive"}]


# ---- columns and labels ------------------------------------------------------------------------------
def test_column_mapping_renames_to_canonical_columns(tmp_path):
    path = write_table(tmp_path / "d.csv", [("a", "x", "positive"), ("b", "y", "negative")], ("id", "sentence", "sentiment"))
    task = classification_task(path, ("data.columns.text", "sentence"), ("data.columns.label", "sentiment"))
    ds = task.read_source(str(path), "train")
    assert ds.column_names == ["text", "label"]
    assert ds.to_list() == [{"text": "x", "label": "positive"}, {"text": "y", "label": "negative"}]


def test_missing_column_names_the_mapping(tmp_path):
    path = write_table(tmp_path / "d.csv", [("x", "positive")], ("sentence", "label"))
    with pytest.raises(AdaptError, match=r"no column 'text' \(columns: sentence, label\); map it with data\.columns "
                                         r"\(e\.g\. data\.columns\.text=sentence\)"):
        classification_task(path).read_source(str(path), "train")


def test_integer_labels_take_their_names(tmp_path):
    path = write_table(tmp_path / "d.tsv", [("good", 1), ("bad", 0), ("fine", 1)])
    task = classification_task(path, ("data.label_names", ["negative", "positive"]))
    assert task.read_source(str(path), "train")["label"] == ["positive", "negative", "positive"]
    out_of_range = write_table(tmp_path / "e.tsv", [("good", 2)])
    with pytest.raises(AdaptError, match=r"label 2 is outside data\.label_names \(0\.\.1\)"):
        task.read_source(str(out_of_range), "train")


def test_labels_without_names_are_learned_sorted(tmp_path):
    path = write_table(tmp_path / "d.csv", [(f"t{i}", label) for i, label in enumerate(["b", "c", "a"] * 4)])
    task = classification_task(path, ("data.label_names", None))
    splits = task.load_splits()
    assert task.label_names == ["a", "b", "c"]
    assert len(splits["train"]) + len(splits["validation"]) == 12


# ---- validation carve -----------------------------------------------------------------------------------
def test_validation_carve_is_seeded_disjoint_and_sized():
    ds = Dataset.from_dict({"text": [f"example {i}" for i in range(40)], "label": ["x"] * 40})
    train, validation = data.carve_validation(ds, 0.25, seed=3)
    again_train, again_validation = data.carve_validation(ds, 0.25, seed=3)
    assert (len(train), len(validation)) == (30, 10)
    assert train["text"] == again_train["text"] and validation["text"] == again_validation["text"]
    assert set(train["text"]).isdisjoint(validation["text"])
    assert set(train["text"]) | set(validation["text"]) == set(ds["text"])
    _, other_validation = data.carve_validation(ds, 0.25, seed=4)
    assert set(other_validation["text"]) != set(validation["text"])


def test_grouped_carve_keeps_groups_whole():
    ds = Dataset.from_dict({"text": [f"q{i}" for i in range(30)], "title": [f"article {i % 6}" for i in range(30)]})
    train, validation = data.carve_validation(ds, 0.34, seed=0, group_column="title")
    assert set(train["title"]).isdisjoint(validation["title"])
    assert len(set(validation["title"])) == 2 and len(validation) == 10 and len(train) == 20


def test_carve_needs_two_examples():
    with pytest.raises(AdaptError, match=r"^the training data: holds 1 example, too few to carve a validation split "
                                         r"from \(need at least 2\); add examples or give --validation FILE$"):
        data.carve_validation(Dataset.from_dict({"text": ["only"]}), 0.1, seed=0)


def test_load_splits_carves_validation_from_a_local_train_file(sentiment_csv):
    task = classification_task(sentiment_csv, ("data.validation_fraction", 0.25), ("train.seed", 1))
    splits = task.load_splits()
    assert (len(splits["train"]), len(splits["validation"])) == (30, 10)
    assert set(splits["train"]["text"]).isdisjoint(splits["validation"]["text"])
    assert task.label_names == ["negative", "positive"]
    capped = classification_task(sentiment_csv, ("data.max_train_examples", 5), ("data.max_eval_examples", 3)).load_splits()
    assert (len(capped["train"]), len(capped["validation"])) == (5, 3)


# ---- tokenization cache ----------------------------------------------------------------------------
def test_cached_map_builds_once(adapt_cache):
    builds = []

    def build():
        builds.append(1)
        return Dataset.from_dict({"input_ids": [[1, 2], [3]], "length": [2, 1]})

    first, first_cached = data.cached_map(["tokenizer", "train", "v1"], build)
    second, second_cached = data.cached_map(["tokenizer", "train", "v1"], build)
    assert (first_cached, second_cached) == (False, True) and len(builds) == 1
    assert second.to_list() == first.to_list() == [{"input_ids": [1, 2], "length": 2}, {"input_ids": [3], "length": 1}]
    assert len(list((adapt_cache / "features").iterdir())) == 1
    _, changed_key_cached = data.cached_map(["tokenizer", "train", "v2"], build)
    _, disabled_cached = data.cached_map(["tokenizer", "train", "v1"], build, enabled=False)
    assert (changed_key_cached, disabled_cached) == (False, False) and len(builds) == 3


def test_featurized_splits_are_cached(tiny_bert, sentiment_csv, adapt_cache):
    from accelerate import Accelerator

    from adapt.train import featurize_splits

    task = classification_task(sentiment_csv, ("model", str(tiny_bert)))
    task.load_tokenizer(str(tiny_bert))
    raw = task.load_splits()
    first = featurize_splits(task, raw, str(tiny_bert), Accelerator(cpu=True))
    assert len(list((adapt_cache / "features").iterdir())) == 2  # train and validation
    again = featurize_splits(task, raw, str(tiny_bert), Accelerator(cpu=True))
    assert again["train"].to_list() == first["train"].to_list()
    assert len(list((adapt_cache / "features").iterdir())) == 2
    row = first["train"][0]
    assert row["length"] == len(row["input_ids"]) and row["labels"] in (0, 1)
    assert row["input_ids"][0] == task.tokenizer.cls_token_id and row["input_ids"][-1] == task.tokenizer.sep_token_id


def test_sentiment_fixture_is_balanced(sentiment_csv):
    labels = data.read_table(sentiment_csv)["label"]
    assert len(labels) == 40 and labels.count("positive") == 20 and len(sentiment_rows()) == 40


# ---- batching -------------------------------------------------------------------------------------------
_rng = random.Random(0)
LENGTHS = [_rng.randint(3, 120) for _ in range(1000)]


def pad_fraction(batches: list[list[int]], lengths: list[int]) -> float:
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    return 1 - sum(lengths[i] for b in batches for i in b) / padded


@pytest.mark.parametrize("grouped", [True, False])
def test_global_batches_are_a_deterministic_permutation(grouped):
    plan = batching.global_batches(LENGTHS, 16, seed=5, epoch=0, group_by_length=grouped)
    assert plan == batching.global_batches(LENGTHS, 16, seed=5, epoch=0, group_by_length=grouped)
    assert sorted(i for b in plan for i in b) == list(range(len(LENGTHS)))
    assert len(plan) == batching.steps_per_epoch(len(LENGTHS), 16) == 63
    assert sorted(len(b) for b in plan)[1:] == [16] * 62  # only one short batch (1000 = 62 * 16 + 8)
    assert plan != batching.global_batches(LENGTHS, 16, seed=5, epoch=1, group_by_length=grouped)
    assert plan != batching.global_batches(LENGTHS, 16, seed=6, epoch=0, group_by_length=grouped)


def test_length_grouping_cuts_padding():
    grouped = pad_fraction(batching.global_batches(LENGTHS, 16, 0, 0, True), LENGTHS)
    shuffled = pad_fraction(batching.global_batches(LENGTHS, 16, 0, 0, False), LENGTHS)
    # uniform lengths 3..120 sorted inside windows of 16 batches: about 5% padding against 46%
    assert shuffled > 0.3 and grouped < 0.07, (grouped, shuffled)


def test_shard_batch_splits_across_ranks_and_wraps_a_short_batch():
    assert batching.shard_batch([4, 5, 6], 0, 1) == [4, 5, 6]
    assert batching.shard_batch([0, 1, 2, 3], 0, 2) == [0, 2] and batching.shard_batch([0, 1, 2, 3], 1, 2) == [1, 3]
    short = [10, 11, 12, 13, 14]
    rank0, rank1 = batching.shard_batch(short, 0, 2), batching.shard_batch(short, 1, 2)
    assert (rank0, rank1) == ([10, 12, 14], [11, 13, 10])  # the first example is repeated to even the ranks
    assert set(rank0) | set(rank1) == set(short)


def test_eval_order_and_batches():
    lengths = [5, 50, 7, 30, 2, 9, 40]
    shards = [batching.eval_order(lengths, rank, 2) for rank in (0, 1)]
    assert shards == [[6, 2, 0, 4], [1, 3, 5]]  # disjoint, longest first
    ordered = sorted(range(len(LENGTHS)), key=lambda i: -LENGTHS[i])
    plan = batching.eval_batches(ordered, LENGTHS, max_batch=32)
    assert [i for b in plan for i in b] == ordered
    assert max(len(b) for b in plan) == 32 and len(plan) == 32
    capped = batching.eval_batches(ordered, LENGTHS, max_batch=32, max_tokens=600)
    assert [i for b in capped for i in b] == ordered
    assert all(max(LENGTHS[i] for i in b) * len(b) <= 600 for b in capped)
    assert all(len(b) <= 32 for b in capped) and len(capped) > len(plan)


def test_iterate_collates_whole_batches_with_their_indices():
    features = Dataset.from_dict({"input_ids": [[1], [2, 3], [4, 5, 6]], "length": [1, 2, 3]})

    def collate(rows):
        return {"n": torch.tensor([len(r) for r in rows["input_ids"]])}

    batches = list(batching.iterate(features, [[2, 0], [1]], collate))
    assert [b["index"].tolist() for b in batches] == [[2, 0], [1]]
    assert [b["n"].tolist() for b in batches] == [[3, 1], [2]]


def test_token_ids_of_a_selection_plus_extra_ids():
    from datasets import Dataset

    from adapt.data import token_ids

    features = Dataset.from_dict({"input_ids": [[5, 7, 5], [9], [3, 7]]}).select([2, 0])  # an index mapping
    assert token_ids(features, extra=[0, 101]).tolist() == [0, 3, 5, 7, 101]


def test_document_column_renames_drops_blank_rows_and_refuses_non_text(tmp_path):
    """The one home of the LM tasks' text column (clm and mlm): renamed `text`, null/blank rows dropped, a number
    refused naming the file's line and the column."""
    ds = Dataset.from_dict({"sentence": ["A cat.", None, "  \n", "A dog."], "label": [0, 1, 0, 1]})
    out = data.document_column(ds, "sentence", "rows")
    assert out.column_names == ["text"] and out["text"] == ["A cat.", "A dog."]
    path = tmp_path / "docs.jsonl"
    path.write_text('\n{"body": 7}\n{"body": 8}\n')  # a blank first line: the row's own line is named
    with pytest.raises(AdaptError, match=r"docs.jsonl: line 2: 'body' is not text \(7\); give each document as"):
        data.document_column(data.read_table(path), "body", str(path))


def test_row_location_follows_the_layout_the_file_was_read_with(tmp_path):
    path = tmp_path / "semi.csv"
    path.write_text("text,label\ngood,1\nbad,0\n", encoding="utf-8")
    assert data.read_table(path, ",")["text"] == ["good", "bad"]
    assert [data.row_location(str(path), i) for i in range(2)] == ["line 2", "line 3"]  # after the header line
    assert data.read_table(path, ",", ["a", "b"])["a"] == ["text", "good", "bad"]
    assert [data.row_location(str(path), i) for i in range(3)] == ["line 1", "line 2", "line 3"]
    # an empty header_names named no fields, yet the file was read with its header line and its rows were
    # located as if it had none (one line early): refused
    with pytest.raises(AdaptError, match=r"semi.csv: data.header_names is empty; name the file's fields in order, or "
                                         r"leave it out when the file has a header line$"):
        data.read_table(path, ",", [])
    data.read_table(path)  # read again as it comes: the layout of the read before is not kept
    assert [data.row_location(str(path), i) for i in range(2)] == ["line 2", "line 3"]


def test_recipe_refuses_empty_header_names():
    with pytest.raises(AdaptError, match=r"^override data.header_names=\[\]: bad value for 'data.header_names': List "
                                         r"should have at least 1 item"):
        resolve_recipe("sentiment", [("data.header_names", [])])
