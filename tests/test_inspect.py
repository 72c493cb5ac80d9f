"""`adapt data inspect`: hand-checked counts on tiny CSV files, the length histogram, and refusals."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from adapt.cli import user_errors
from adapt.cli_extra import data_inspect_command
from adapt.errors import AdaptError
from adapt.inspect_data import entity_counts, inspect_recipe
from adapt.recipe import resolve_recipe

# Every word below is one WordPiece of the uncased MiniLM vocabulary, so an example's token count is
# its word count + 2 ([CLS], [SEP]).
TRAIN = """text,label
good movie,positive
bad movie,negative
good movie,positive
great fun,positive
awful plot twist that never ends and goes on,negative
"""
VALIDATION = """text,label
good movie,positive
dull,negative
nice film,positive
"""


def _write(tmp_path, train=TRAIN, validation=VALIDATION):
    (tmp_path / "train.csv").write_text(train)
    (tmp_path / "val.csv").write_text(validation)
    return [("data.train", str(tmp_path / "train.csv")), ("data.validation", str(tmp_path / "val.csv")),
            ("train.max_length", 8)]


def _cli():
    app = typer.Typer()
    app.command("inspect")(user_errors(data_inspect_command))
    app.command("unused")(lambda: None)  # two commands keep typer from collapsing the app into one
    return app


def test_counts_duplicates_leakage_and_truncation(tmp_path):
    report, lengths = inspect_recipe(resolve_recipe("sentiment", _write(tmp_path)))
    train, validation = report["splits"]["train"], report["splits"]["validation"]
    assert lengths["train"] == [4, 4, 4, 4, 11]
    assert train["examples"] == 5 and validation["examples"] == 3
    assert train["duplicates"] == 1  # "good movie" twice
    assert validation["overlap_with_train"] == 1  # "good movie" leaks from train
    assert train["tokens"]["truncated"] == 1 and train["tokens"]["truncated_share"] == 0.2  # 11 > 8
    assert train["tokens"]["max"] == 11 and train["tokens"]["p50"] == 4
    assert validation["tokens"]["truncated"] == 0
    assert train["labels"] == {"positive": 3, "negative": 2}
    assert any("also appear in train" in w for w in report["warnings"])


def test_cli_json_and_plot(tmp_path):
    overrides = [f"{k}={v}" for k, v in _write(tmp_path)]
    plot = tmp_path / "lengths.png"
    result = CliRunner().invoke(_cli(), ["inspect", "--json", "--plot", str(plot), *overrides])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout[result.stdout.index("{"):])
    assert report["splits"]["validation"]["overlap_with_train"] == 1
    assert plot.stat().st_size > 1000


@pytest.mark.parametrize("train, message", [
    ("text,label\ngood,positive\nbad,positive\nfine,positive\n", "every training example has label 'positive'"),
    ("text,label\ngood,positive\n  ,negative\n", "line 3: the 'text' column is empty"),
])
def test_broken_data_is_refused_and_nothing_written(tmp_path, train, message):
    overrides = _write(tmp_path, train=train, validation="text,label\nok,positive\nno,negative\n")
    with pytest.raises(AdaptError, match=message):
        inspect_recipe(resolve_recipe("sentiment", overrides))
    plot = tmp_path / "lengths.png"
    result = CliRunner().invoke(_cli(), ["inspect", "--plot", str(plot), *[f"{k}={v}" for k, v in overrides]])
    assert result.exit_code == 2
    last_line = result.stderr.strip().splitlines()[-1]  # earlier lines are datasets' progress bars
    assert last_line.startswith("error: ") and message in last_line
    assert not plot.exists()


def test_entity_counts_iob1_and_iob2():
    tags = [["B-PER", "I-PER", "O", "B-LOC"], ["I-ORG", "I-ORG", "B-ORG", "O", "I-MISC"]]
    assert entity_counts(tags) == {"PER": 1, "LOC": 1, "ORG": 2, "MISC": 1}
