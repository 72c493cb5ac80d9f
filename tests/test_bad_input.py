"""Every kind of bad input to `adapt finetune` ends with exit code 2 and one line on stderr that names the
problem and the fix, with no traceback and nothing written to the output directory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import sentiment_rows, write_table
from typer.testing import CliRunner

from adapt.cli import app

ADAPT = Path(sys.executable).with_name("adapt")


def finetune(tiny_bert, out: Path, *args: str):
    return CliRunner().invoke(app, ["finetune", "--model", str(tiny_bert), "--output-dir", str(out),
                                    "--max-steps", "2", "--batch-size", "8", "tracking=[]", *args])


def is_progress_bar(line: str) -> bool:
    """tqdm lines (e.g. datasets' `Map: 100%|####| 40/40 [00:00<00:00, 17723 examples/s]`)."""
    return bool(re.search(r"\d+%\|.*\| \d+/\d+ \[", line))


def assert_user_error(result, out: Path, *fragments: str) -> str:
    """The one-line error contract (progress bars aside); returns the message."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip() and not is_progress_bar(line)]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output and result.stdout == ""
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert not out.exists(), f"{out} was written although the input was bad"
    return lines[0]


def test_missing_data_file(tiny_bert, tmp_path, adapt_cache):
    missing = tmp_path / "nope.csv"
    assert_user_error(finetune(tiny_bert, tmp_path / "out", "--data", str(missing)), tmp_path / "out",
                      f"data file {missing} does not exist", "check the path")


def test_unknown_column(tiny_bert, tmp_path, adapt_cache):
    path = write_table(tmp_path / "d.csv", sentiment_rows(), ("sentence", "label"))
    assert_user_error(finetune(tiny_bert, tmp_path / "out", "--data", str(path)), tmp_path / "out",
                      f"{path}: no column 'text' (columns: sentence, label)", "data.columns.text=sentence")


def test_header_only_split(tiny_bert, tmp_path, adapt_cache):
    train = write_table(tmp_path / "train.csv", sentiment_rows())
    empty = write_table(tmp_path / "validation.csv", [])
    assert_user_error(finetune(tiny_bert, tmp_path / "out", "--data", str(train), "--validation", str(empty)),
                      tmp_path / "out", f"{empty}: the split has no examples", "at least one example")


def test_validation_label_never_seen_in_train(tiny_bert, tmp_path, adapt_cache):
    train = write_table(tmp_path / "train.csv", sentiment_rows())
    validation = write_table(tmp_path / "validation.csv", [("fine", "positive"), ("meh", "neutral")])
    assert_user_error(finetune(tiny_bert, tmp_path / "out", "--data", str(train), "--validation", str(validation)),
                      tmp_path / "out",
                      f"{validation}: line 3: label 'neutral' is not one of data.label_names (negative, positive)",
                      "list every class in data.label_names")


def test_integer_label_outside_label_names(tiny_bert, tmp_path, adapt_cache):
    train = write_table(tmp_path / "train.tsv", [("good", 1), ("bad", 0), ("odd", 7)])
    assert_user_error(finetune(tiny_bert, tmp_path / "out", "--data", str(train)), tmp_path / "out",
                      f"{train}: line 4: label 7 is outside data.label_names (0..1)")


def test_non_utf8_text_names_the_line(tiny_bert, tmp_path, adapt_cache):
    path = tmp_path / "bad.csv"
    path.write_bytes(b"text,label\ngreat film,positive\nawful \xff\xfe film,negative\n")
    assert_user_error(finetune(tiny_bert, tmp_path / "out", "--data", str(path)), tmp_path / "out",
                      f"{path}: line 3 is not valid UTF-8 (byte 0xff); re-save the file as UTF-8")


def test_unknown_recipe(tiny_bert, tmp_path, adapt_cache):
    assert_user_error(finetune(tiny_bert, tmp_path / "out", "--recipe", "nope"), tmp_path / "out",
                      "unknown recipe 'nope'; choose one of", "sentiment", "or give a path to a YAML file")


def test_unknown_recipe_key(tiny_bert, tmp_path, adapt_cache):
    assert_user_error(finetune(tiny_bert, tmp_path / "out", "train.lrr=0.1"), tmp_path / "out",
                      "unknown key 'train.lrr'", "adapt recipes show")


def test_missing_model_folder(sentiment_csv, tmp_path, adapt_cache):
    missing = tmp_path / "no_model"
    assert_user_error(finetune(missing, tmp_path / "out", "--data", str(sentiment_csv)), tmp_path / "out",
                      f"cannot load a tokenizer from '{missing}'", "check --model")


def test_unknown_embedded_dataset(tiny_bert, tmp_path, adapt_cache):
    assert_user_error(finetune(tiny_bert, tmp_path / "out", "--data", "embedded:nope"), tmp_path / "out",
                      "no embedded dataset 'embedded:nope'")


def test_resume_without_a_checkpoint(tiny_bert, sentiment_csv, tmp_path, adapt_cache):
    out = tmp_path / "out"
    assert_user_error(finetune(tiny_bert, out, "--data", str(sentiment_csv), "--resume"), out,
                      f"--resume: no complete checkpoint in {out / 'checkpoints'}; start without --resume")
    missing = tmp_path / "step-9"
    assert_user_error(finetune(tiny_bert, out, "--data", str(sentiment_csv), "--resume-from", str(missing)), out,
                      f"--resume: no complete checkpoint in {missing}")


def test_non_empty_output_dir_needs_overwrite(tiny_bert, sentiment_csv, tmp_path, adapt_cache):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    result = finetune(tiny_bert, out, "--data", str(sentiment_csv))
    assert result.exit_code == 2 and result.stderr.strip().splitlines() == [
        f"error: output directory {out} is not empty; pass --overwrite to replace it, --resume to continue it, "
        "or choose another --output-dir"]
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "keep me"

    # a folder that is not an adapt run is never deleted, not even with --overwrite (tests/test_trust_runs.py)
    result = finetune(tiny_bert, out, "--data", str(sentiment_csv), "--overwrite")
    assert result.exit_code == 2 and "is not an adapt run" in result.stderr
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "keep me"


def test_real_command_prints_one_line_and_exits_2(tiny_bert, tmp_path):
    """The installed console script, in a fresh process: exit status 2, one stderr line, no traceback."""
    path = tmp_path / "bad.tsv"
    path.write_bytes(b"text\tlabel\nfine\tpositive\ncaf\xe9\tnegative\n")
    out = tmp_path / "out"
    env = {**os.environ, "ADAPT_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([str(ADAPT), "finetune", "--model", str(tiny_bert), "--data", str(path),
                           "--output-dir", str(out), "tracking=[]"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        f"error: {path}: line 3 is not valid UTF-8 (byte 0xe9); re-save the file as UTF-8"]
    assert proc.stdout == "" and not out.exists()


@pytest.mark.parametrize("args, message", [
    (["recipes", "show", "nope"], "error: unknown recipe 'nope'"),
    (["predict", "--model", "/nonexistent/run", "hello"], "error: /nonexistent/run is not a model folder"),
])
def test_other_commands_report_bad_input_the_same_way(args, message):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith(message)
