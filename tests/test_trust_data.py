"""Issue 15, tabular data and labels: every bad file ends in one AdaptError line naming the file and its
physical line with the fix; labels are read by column content (ids, names, empty, regression scores); and
`adapt data inspect` and `adapt finetune` accept and refuse exactly the same data."""

from __future__ import annotations

import gzip
import json
import re

import pandas as pd
import pytest
from conftest import sentiment_rows, write_table
from typer.testing import CliRunner

from adapt import data
from adapt.cli import app
from adapt.errors import AdaptError
from adapt.inspect_data import inspect_recipe
from adapt.recipe import resolve_recipe
from adapt.tasks import get_task


def classification_task(train, *overrides):
    return get_task(resolve_recipe("sentiment", [("data.train", str(train)), ("tracking", []), *overrides]))


def read_labels(path, *overrides) -> list[str]:
    return classification_task(path, *overrides).read_source(str(path), "train")["label"]


def refused(path, *overrides) -> str:
    with pytest.raises(AdaptError) as err:
        classification_task(path, *overrides).read_source(str(path), "train")
    return str(err.value)


# ---- row_location: physical lines -------------------------------------------------------------------
def test_row_location_counts_physical_lines_of_csv_after_quoted_newlines_and_blank_lines(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('text,label\n"two\nlines",a\nplain,b\n\n"three\nmore\nlines",a\nlast,b\n', encoding="utf-8")
    assert len(data.read_table(path)) == 4
    assert [data.row_location(str(path), i) for i in range(5)] == ["line 2", "line 4", "line 6", "line 9",
                                                                    "record 5"]


def test_row_location_of_jsonl_json_list_gz_and_parquet(tmp_path):
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('\n{"text": "a"}\n\n{"text": "b"}\n', encoding="utf-8")
    assert [data.row_location(str(jsonl), i) for i in range(2)] == ["line 2", "line 4"]
    listed = tmp_path / "d.json"
    listed.write_text('[\n  {"text": "a",\n   "x": [1,\n 2]},\n\n  {"text": "b"}, {"text": "c"}\n]', encoding="utf-8")
    assert [data.row_location(str(listed), i) for i in range(3)] == ["line 2", "line 6", "line 6"]
    packed = tmp_path / "d.csv.gz"
    packed.write_bytes(gzip.compress(b'text,label\n"x\ny",a\nz,b\n'))
    assert data.row_location(str(packed), 1) == "line 4"
    parquet = tmp_path / "d.parquet"
    pd.DataFrame({"text": ["a", "b"]}).to_parquet(parquet)
    assert data.row_location(str(parquet), 1) == "record 2"
    assert data.row_location("some/hub-id", 0) == "record 1"


# ---- B: a bad file is one line, never a traceback ---------------------------------------------------------
BAD_FILES = [
    ("semi.csv", "text;label\nhello, world;positive\nbad;negative\n",
     "looks ;-separated, not comma-separated", "re-save it with commas"),
    ("tabs.csv", "text\tlabel\nhello, world\tpositive\n", "looks tab-separated", "rename it to tabs.tsv"),
    ("commas.tsv", "text,label\nhello,positive\n", "looks comma-separated", "rename it to commas.csv"),
    ("dup.csv", "text,label,text\na,positive,b\n",
     "line 1: the header names column 'text' twice (columns 1 and 3)", "rename or remove one"),
    ("mixed.jsonl", '{"text": "a", "label": 1}\n\n{"text": "b", "label": "pos"}\n',
     "line 3: field 'label' is string (\"pos\") but number on line 1", "same type"),
    ("numbers.json", "[1, 2, 3]", "line 1: item 1 of the JSON list is a number (1), not an object", "list of objects"),
    ("strings.json", '[\n{"text": "a", "label": "x"},\n"oops"\n]',
     "line 3: item 2 of the JSON list is a string (\"oops\"), not an object", "list of objects"),
    ("nested.json", "[[1, 2], [3]]", "item 1 of the JSON list is a list ([1, 2]), not an object", "list of objects"),
    ("mixedlist.jsonl", '{"text": "a", "label": [1, "B-PER"]}\n',
     "line 1: field 'label' is a list mixing numbers, strings", "all one type"),
    ("dupkey.jsonl", '{"text": "a", "label": "x"}\n{"text": "a", "text": "b", "label": "y"}\n',
     "line 2 has the key 'text' twice", "keep one"),
    ("text.parquet", "text,label\na,positive\n", "not a readable Parquet file (Parquet magic bytes not found",
     "it holds text; rename it"),
    ("json.parquet", '{"text": "a"}\n', "not a readable Parquet file", "it holds JSON text; rename it to .json"),
    ("quote.csv", 'text,label\n"never closed,positive\nb,negative\n',
     "line 2 has 1 fields but the header has 2", "unclosed"),
    ("fields.csv", 'text,label\n"a\nb",positive\nc,negative,extra\n',
     "line 4 has 3 fields but the header has 2", "fix that line"),
    ("trailing.tsv", "text\tlabel\t\ngood\tpositive\nbad\tnegative\n",
     "line 1: header column 3 has no name (a stray separator at the end of the line)", "remove it or name the column"),
]

# files that are not text at all, named as text: say what they are (by their leading bytes), not "line 1"
NOT_TEXT = [
    ("book.csv", b"PK\x03\x04\x14\x00\xa4\x8f" + b"\x00" * 20, "a ZIP archive (an Excel .xlsx workbook or a zipped file)"),
    ("old.csv", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1\x00", "an old Excel/Office (.xls) file"),
    ("wide.jsonl", '{"text": "a", "label": "b"}\n'.encode("utf-16"), "UTF-16 text"),
    ("packed.tsv", gzip.compress(b"text\tlabel\n\xff\n"), "gzip-compressed data"),
]


@pytest.mark.parametrize("name, content, kind", NOT_TEXT, ids=[n[0] for n in NOT_TEXT])
def test_binary_file_under_a_text_name_says_what_it_is(tmp_path, name, content, kind):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(AdaptError) as err:
        data.read_table(path)
    assert str(err.value) == (f"{path}: {kind}, not UTF-8 text; export or re-save it as "
                              ".csv, .tsv, .json, .jsonl, .parquet"), str(err.value)


@pytest.mark.parametrize("name, content, fragments", [(b[0], b[1], b[2:]) for b in BAD_FILES],
                         ids=[b[0] for b in BAD_FILES])
def test_bad_file_is_one_line_naming_file_line_and_fix(tmp_path, name, content, fragments):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(AdaptError) as err:
        data.read_table(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_truncated_gzip_is_named_not_aborted(tmp_path):
    whole = gzip.compress(("text,label\n" + "a fine film,positive\n" * 200).encode())
    path = tmp_path / "cut.csv.gz"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(AdaptError, match=re.escape(f"{path}: the gz data is truncated or corrupt (")):
        data.read_table(path)


def test_csv_field_longer_than_csv_default_limit_is_read(tmp_path):
    long_text = "word " * 40_000  # 200,000 characters: over csv's default field limit of 131,072
    path = write_table(tmp_path / "long.csv", [(long_text, "positive"), ("short", "negative")])
    assert data.read_table(path)["text"] == [long_text, "short"]


def test_empty_json_lines_file_says_empty(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n  \n")
    with pytest.raises(AdaptError, match=re.escape(f"{path}: the file is empty; it needs at least one example")):
        data.read_table(path)


def test_jsonl_missing_keys_become_null_not_dropped_columns(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b", "label": "x"}\n', encoding="utf-8")
    assert data.read_table(path).to_list() == [{"text": "a", "label": None}, {"text": "b", "label": "x"}]


# ---- A/E: labels by column content ------------------------------------------------------------------------
def test_one_and_one_point_zero_are_one_class(tmp_path):
    path = write_table(tmp_path / "d.csv", [("a", "1"), ("b", "1.0"), ("c", "0"), ("d", "0.0"), ("e", " 2 ")])
    assert read_labels(path, ("data.label_names", None)) == ["1", "1", "0", "0", "2"]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": 1.0}\n{"text": "c", "label": 0}\n')
    assert read_labels(jsonl, ("data.label_names", None)) == ["1", "1", "0"]


def test_float_formatted_ids_take_label_names(tmp_path):
    path = write_table(tmp_path / "d.csv", [("a", "0.0"), ("b", "1.0"), ("c", "1")])
    assert read_labels(path, ("data.label_names", ["negative", "positive"])) == ["negative", "positive", "positive"]
    parquet = tmp_path / "d.parquet"
    pd.DataFrame({"text": ["a", "b"], "label": [1.0, 0.0]}).to_parquet(parquet)
    assert read_labels(parquet) == ["positive", "negative"]  # the sentiment recipe names 0/1 negative/positive


@pytest.mark.parametrize("label_cell", ["", "   ", "nan", "NaN"])
def test_empty_label_names_file_and_physical_line(tmp_path, label_cell):
    path = tmp_path / "d.csv"
    path.write_text(f'text,label\n"a review\nover two lines",positive\nfine,{label_cell}\nok,negative\n')
    message = refused(path)
    assert message == (f"{path}: line 4: the label ('label') is empty; give every example a label or remove "
                       "that row")


@pytest.mark.parametrize("value", ["null", "NaN"])
def test_null_and_nan_labels_in_jsonl_are_errors_not_class_none(tmp_path, value):
    path = tmp_path / "d.jsonl"
    path.write_text(f'{{"text": "a", "label": "positive"}}\n\n{{"text": "b", "label": {value}}}\n')
    assert refused(path, ("data.label_names", None)).startswith(f"{path}: line 3: the label ('label') is empty")


def test_empty_or_null_text_names_the_users_column_and_line(tmp_path):
    path = write_table(tmp_path / "d.csv", [("good", "positive"), ("  ", "negative")], ("sentence", "label"))
    assert refused(path, ("data.columns.text", "sentence")) == (
        f"{path}: line 3: the 'sentence' column is empty; remove that row or fill it in (or map the right column "
        "with data.columns)")
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"text": "a", "label": "positive"}\n{"text": null, "label": "negative"}\n')
    assert refused(jsonl).startswith(f"{jsonl}: line 2: the 'text' column is empty")
    numbers = tmp_path / "n.jsonl"
    numbers.write_text('{"text": 5, "label": "positive"}\n')
    assert refused(numbers).startswith(f"{numbers}: line 1: the 'text' column holds a number (5), not text")


def test_continuous_scores_are_refused_as_a_regression_target(tmp_path):
    scores = ["5.0", "3.8", "0.0", "4.25", "1.6"]  # STS-B style similarity scores
    path = write_table(tmp_path / "stsb.tsv", [(f"s{i}", s) for i, s in enumerate(scores)])
    # problem_type auto routes such a column to regression (tests/test_task_regression.py); single-label refuses it
    message = refused(path, ("data.label_names", None), ("task_options.problem_type", "single_label_classification"))
    assert message.startswith(f"{path}: line 3: the label column 'label' holds continuous numbers (3.8 here; "
                              "5 distinct values from 0 to 5)")
    assert "regression target" in message and "class names or integer class ids" in message
    assert "set task_options.problem_type=regression (or auto)" in message


def test_label_names_other_than_the_recipes_say_how_to_set_them(tmp_path):
    path = write_table(tmp_path / "d.csv", [("good", "pos"), ("bad", "neg")])
    assert refused(path) == (
        f"{path}: line 2: none of the file's labels (neg, pos) is in data.label_names (negative, positive); if "
        "they name the same classes, set data.label_names to the file's labels in class-id order (e.g. "
        "data.label_names=[neg,pos]), or rename the labels in the file")
    assert read_labels(path, ("data.label_names", ["neg", "pos"])) == ["pos", "neg"]


def test_validation_label_unseen_in_train_names_the_validation_line(tmp_path):
    train = write_table(tmp_path / "train.csv", [("a", "x"), ("b", "y")])
    validation = write_table(tmp_path / "val.csv", [("c", "x"), ("d", "z")])
    task = classification_task(train, ("data.label_names", None), ("data.validation", str(validation)))
    with pytest.raises(AdaptError, match=re.escape(f"{validation}: line 3: label 'z' in the validation split "
                                                   "never appears in train (train labels: x, y)")):
        task.load_splits()


# ---- inspect and finetune: one validation path ----------------------------------------------------------
def _cli_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines()
            if line.strip() and not re.search(r"\d+%\|.*\| \d+/\d+ \[", line)]


@pytest.mark.parametrize("rows, expected", [
    ([*sentiment_rows()[:6], ("", "positive")], "line 8: the 'text' column is empty"),
    ([*sentiment_rows()[:6], ("fine", "")], "line 8: the label ('label') is empty"),
    ([*sentiment_rows()[:6], ("fine", "2.5")], "line 8: label '2.5' is not one of data.label_names"),
])
def test_inspect_and_finetune_refuse_the_same_data_and_finetune_writes_nothing(tiny_bert, tmp_path, adapt_cache,
                                                                                rows, expected):
    path = write_table(tmp_path / "train.csv", rows)
    with pytest.raises(AdaptError) as err:
        inspect_recipe(resolve_recipe("sentiment", [("data.train", str(path)), ("train.max_length", 8)]))
    assert str(err.value).startswith(f"{path}: {expected}")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["finetune", "--model", str(tiny_bert), "--data", str(path), "--output-dir",
                                      str(out), "--max-steps", "2", "tracking=[]"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert _cli_lines(result)[-1] == f"error: {err.value}"
    assert not out.exists()


def test_finetune_on_a_truncated_gzip_exits_2_with_one_line(tiny_bert, tmp_path, adapt_cache):
    whole = gzip.compress(("text,label\n" + "a fine film,positive\nawful,negative\n" * 100).encode())
    path = tmp_path / "cut.csv.gz"
    path.write_bytes(whole[: len(whole) // 2])
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["finetune", "--model", str(tiny_bert), "--data", str(path), "--output-dir",
                                      str(out), "--max-steps", "2", "tracking=[]"])
    assert result.exit_code == 2, result.output
    assert _cli_lines(result)[-1].startswith(f"error: {path}: the gz data is truncated or corrupt")
    assert "Aborted" not in result.output and not out.exists()


def test_inspect_json_of_mixed_label_types_is_one_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps({"text": t, "label": 1 if i else "positive"})
                              for i, (t, _) in enumerate(sentiment_rows()[:4])) + "\n")
    result = CliRunner().invoke(app, ["data", "inspect", f"data.train={path}"])
    assert result.exit_code == 2
    assert _cli_lines(result)[-1] == (f"error: {path}: line 2: field 'label' is number (1) but string on line 1; "
                                      'give every row the same type (e.g. quote numbers: "1")')


# ---- wave 2 (W-B): predict JSON lines, unclosed quotes, multi-label cells, carving ---------------------------
def test_classification_predict_reads_the_text_column_of_json_lines(tmp_path):
    task = classification_task(tmp_path / "unused.csv")
    inputs = task.inputs_from_texts([json.dumps({"text": "great", "label": "positive"}), "a plain {line",
                                     '{"text": "dull"}'])
    assert inputs.column_names == ["text"]
    assert inputs["text"] == ["great", "a plain {line", "dull"]
    with pytest.raises(AdaptError, match=r"^input 2: the JSON object has no 'text' \(keys: txt\); name the text "
                                         r"column with --set data.columns.text=KEY$"):
        task.inputs_from_texts([json.dumps({"text": "ok"}), json.dumps({"txt": "bad"})])
    with pytest.raises(AdaptError, match=r"^input 1: the 'text' value is a number, not text"):
        task.inputs_from_texts([json.dumps({"text": 5})])


def test_classification_predict_of_a_pair_model_reads_both_mapped_columns(tmp_path):
    task = classification_task(tmp_path / "unused.csv", ("data.columns.text", "#1 String"),
                               ("data.columns.text_pair", "#2 String"))
    inputs = task.inputs_from_texts([json.dumps({"#1 String": "a cat sat", "#2 String": "a cat was sitting"})])
    assert inputs.to_list() == [{"text": "a cat sat", "text_pair": "a cat was sitting"}]
    with pytest.raises(AdaptError, match=r"^input 1: the JSON object has no '#2 String' \(keys: #1 String\)"):
        task.inputs_from_texts([json.dumps({"#1 String": "only one"})])
    with pytest.raises(AdaptError, match=r"^input 1: a sentence-pair model needs both texts"):
        task.inputs_from_texts(["a plain line"])


def _reviews(tmp_path, name: str, lines: list[str]):
    head = ["text,label", "a fine film,positive", "bad,negative", "great,positive", "meh,negative", "nice,positive"]
    path = tmp_path / name
    path.write_text("\n".join(head + lines) + "\n", encoding="utf-8")
    return path


def test_an_unclosed_quote_that_swallows_the_next_record_is_refused_at_its_opening_line(tmp_path):
    path = _reviews(tmp_path, "u.csv", ['"dull and lifeless,negative', 'fun "ride",positive', "boring,negative"])
    message = refused(path)
    assert message == (f"{path}: line 7: a quote (\") opens a field here that runs over lines 7-8, whose lines "
                       "look like separate records: the quote is probably never closed; close it (or remove it) on "
                       "line 7")
    several = _reviews(tmp_path, "u3.csv", ['"dull and lifeless,negative', "fun ride,positive", '"boring",negative'])
    assert "line 7: a quote (\") opens a field here that runs over lines 7-9" in refused(several)
    to_the_end = _reviews(tmp_path, "eof.csv", ['"dull and lifeless,negative', "fun ride,positive"])
    assert "line 7 has 1 fields but the header has 2" in refused(to_the_end)


def test_a_legal_multi_line_review_is_read_with_one_note(tmp_path, capsys):
    path = _reviews(tmp_path, "ok.csv", ['"a wonderful, moving film\nsecond line",positive', "fun ride,positive",
                                         '"terrible\nacting",negative'])
    table = data.read_table(path)
    assert len(table) == 8
    assert table["text"][5] == "a wonderful, moving film\nsecond line"
    assert table["label"][5:] == ["positive", "positive", "negative"]
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert notes == [f"note: {path}: 2 records have a quoted field running over several lines (first at line 7); "
                     "each is read as one example"]
    data.read_table(_reviews(tmp_path, "plain.csv", ["x,positive"]))
    assert "note:" not in capsys.readouterr().err


@pytest.mark.parametrize("labels, line, cell", [
    (["6", "27", "6,9,27", "9"], 4, "6,9,27"),           # all parts integer ids (GoEmotions), even unseen alone
    (["joy", "anger", "joy", "joy;anger"], 5, "joy;anger"),  # names each seen alone elsewhere
    (["joy", "anger", "joy | anger", "joy"], 4, "joy | anger"),
])
def test_a_label_cell_listing_several_labels_is_refused_as_multi_label(tmp_path, labels, line, cell):
    # under problem_type auto such a column is multi-label (tests/test_task_multilabel.py); single-label refuses it
    path = write_table(tmp_path / "g.csv", [(f"text {i}", label) for i, label in enumerate(labels)])
    assert refused(path, ("task_options.problem_type", "single_label_classification")) == (
        f"{path}: line {line}: the label ('label') '{cell}' lists several labels, but task_options.problem_type is "
        "single_label_classification; set task_options.problem_type=multi_label_classification (or auto), or give "
        "each example exactly one label (or check data.columns.label)")


def test_delimiters_inside_single_labels_are_not_multi_label(tmp_path):
    path = write_table(tmp_path / "n.csv", [("a", "arts, culture"), ("b", "science"), ("c", "arts, culture")])
    assert read_labels(path, ("data.label_names", None)) == ["arts, culture", "science", "arts, culture"]
    listed = tmp_path / "l.jsonl"
    listed.write_text(json.dumps({"text": "a", "label": ["positive", "negative"]}) + "\n", encoding="utf-8")
    assert refused(listed, ("task_options.problem_type", "single_label_classification")) == (
        f"{listed}: line 1: the label ('label') is a list [\"positive\", \"negative\"], but task_options.problem_type "
        "is single_label_classification; set task_options.problem_type=multi_label_classification (or auto), or "
        "give each example exactly one label (or check data.columns.label)")


def test_carving_names_the_source_and_count(tmp_path):
    from datasets import Dataset

    with pytest.raises(AdaptError) as err:
        data.carve_validation(Dataset.from_dict({"text": ["only"]}), 0.1, seed=0, source="one.csv")
    assert str(err.value) == ("one.csv: holds 1 example, too few to carve a validation split from (need at least "
                              "2); add examples or give --validation FILE")
    conll = tmp_path / "noblank.txt"
    conll.write_text("John B-PER\nSmith I-PER\nlives O\nin O\nParis B-LOC\n", encoding="utf-8")
    with pytest.raises(AdaptError) as err:
        data.carve_validation(Dataset.from_dict({"text": [["John"]]}), 0.1, seed=0, source=str(conll))
    assert str(err.value).startswith(f"{conll}: holds 1 example, too few to carve a validation split from (need at "
                                     "least 2): its 5 lines have no blank line between them, so they read as one "
                                     "sentence")
    assert str(err.value).endswith("add a blank line after each sentence or give --validation FILE")


def test_labels_are_decided_per_distinct_value_and_errors_still_name_the_first_bad_row():
    from adapt.tasks.classification import class_labels, detect_problem_type

    # True is a name, 1 is a class id: equal as dict keys, told apart by type
    assert class_labels([1, True, 1.0, "1", " neg "], "f.csv", None) == ["1", "True", "1", "1", "neg"]
    names = ["negative", "positive"]
    assert class_labels([0, 1, 1, 0], "f.csv", names) == ["negative", "positive", "positive", "negative"]
    assert detect_problem_type(["a", "b"] * 1000 + ["a;b"]) == "multi_label_classification"
    assert detect_problem_type(["1", "2"] * 1000 + ["2.5"]) == "regression"
    # row 3 (record 4) is the first row whose value fails, though its value appears again later
    with pytest.raises(AdaptError, match=r"^f\.csv: record 4: label 7 is outside data\.label_names"):
        class_labels([0, 1, 0, 7, 1, 9, 7], "f.csv", ["negative", "positive"])
    with pytest.raises(AdaptError, match=r"^f\.csv: record 5: the label \('label'\) is empty"):
        class_labels(["a", "b", "a", "b", "", "c", None], "f.csv", None)
    with pytest.raises(AdaptError, match=r"^f\.csv: record 2: the label \('label'\) is a list"):  # unhashable cells
        class_labels(["a", ["b", "c"]], "f.csv", None)
