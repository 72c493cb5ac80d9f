"""The `adapt` command line: help for every command and option, flags mapped onto recipe keys, and
`adapt predict` on a finished run."""

from __future__ import annotations

import json
import re

import pytest
import typer
from typer.testing import CliRunner

import adapt.train
from adapt.cli import app
from adapt.recipe import FLAG_KEYS

CLICK_APP = typer.main.get_command(app)


def all_commands(group=CLICK_APP, prefix: tuple[str, ...] = ()):
    """(argv prefix, click command) for every command and sub-command."""
    for name, command in group.commands.items():
        yield (*prefix, name), command
        if hasattr(command, "commands"):  # a group (typer vendors its own click classes)
            yield from all_commands(command, (*prefix, name))


COMMANDS = dict(all_commands())


def flat(text: str) -> str:
    """Help text without rich's box drawing and line wrapping."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def test_every_command_is_covered():
    assert {"finetune", "predict", "eval", "recipes", "recipes show"} <= {" ".join(k) for k in COMMANDS}


@pytest.mark.parametrize("argv", list(COMMANDS), ids=" ".join)
def test_help_lists_every_option_with_its_help(argv):
    command = COMMANDS[argv]
    result = CliRunner(env={"COLUMNS": "300"}).invoke(app, [*argv, "--help"])
    assert result.exit_code == 0, result.output
    shown = flat(result.stdout)
    assert flat(command.help or "").split(".")[0] in shown  # the command's own summary
    for param in command.params:
        if param.name == "help" or getattr(param, "hidden", False):
            continue
        assert param.help, f"`adapt {' '.join(argv)}`: {param.name} has no help text"
        assert flat(param.help) in shown, (param.name, param.help)
        if param.param_type_name == "option":
            assert param.opts[0] in shown


def test_top_level_help_lists_the_commands():
    result = CliRunner(env={"COLUMNS": "300"}).invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in ("finetune", "predict", "eval", "recipes"):
        assert re.search(rf"│ {name}\s", result.stdout), name


@pytest.fixture
def captured_run(monkeypatch):
    """Replace the training loop with a recorder of what the CLI asked for."""
    calls = []
    monkeypatch.setattr(adapt.train, "finetune", lambda recipe, **kwargs: calls.append((recipe, kwargs)))
    return calls


def test_finetune_flags_set_their_recipe_keys(captured_run):
    args = ["finetune", "--model", "some/model", "--data", "train.csv", "--validation", "dev.csv", "--test",
            "test.csv", "--epochs", "2.5", "--lr", "3e-5", "--batch-size", "4", "--grad-accum", "3",
            "--max-steps", "7", "--max-train-examples", "9", "--eval-steps", "2", "--save-steps", "5",
            "--output-dir", "out", "--seed", "11", "train.warmup_ratio=0.2", "data.columns.text=sentence"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    [(recipe, kwargs)] = captured_run
    assert kwargs == {"overwrite": False, "resume": False}
    assert recipe.name == "sentiment" and recipe.model == "some/model"
    assert (recipe.data.train, recipe.data.validation, recipe.data.test) == ("train.csv", "dev.csv", "test.csv")
    t = recipe.train
    assert (t.epochs, t.lr, t.batch_size, t.grad_accum, t.max_steps, t.eval_steps, t.save_steps, t.seed) == (
        2.5, 3e-5, 4, 3, 7, 2, 5, 11)
    assert recipe.data.max_train_examples == 9 and recipe.output_dir == "out"
    assert t.warmup_ratio == 0.2 and recipe.data.columns.text == "sentence"
    assert set(FLAG_KEYS) == {"model", "data", "validation", "test", "epochs", "lr", "batch_size", "max_steps",
                              "output_dir", "seed", "max_train_examples", "eval_steps", "save_steps", "grad_accum"}


def test_finetune_overwrite_and_resume_are_passed_on(captured_run, tmp_path):
    runner = CliRunner()
    assert runner.invoke(app, ["finetune", "--overwrite"]).exit_code == 0
    assert runner.invoke(app, ["finetune", "--resume-from", str(tmp_path)]).exit_code == 0
    assert runner.invoke(app, ["finetune", "--resume", "--data", "x.csv"]).exit_code == 0
    assert [kwargs for _, kwargs in captured_run] == [
        {"overwrite": True, "resume": False}, {"overwrite": False, "resume": str(tmp_path)},
        {"overwrite": False, "resume": True}]
    assert captured_run[-1][0].data.train == "x.csv"


def test_interrupted_run_exits_130_with_the_resume_hint(monkeypatch):
    def interrupted(recipe, **kwargs):
        raise adapt.train.Interrupted("interrupted at step 3/10; checkpoint saved to x. Resume with --resume")

    monkeypatch.setattr(adapt.train, "finetune", interrupted)
    result = CliRunner().invoke(app, ["finetune"])
    assert result.exit_code == 130
    assert result.stderr == "interrupted at step 3/10; checkpoint saved to x. Resume with --resume\n"


def test_predict_prints_one_json_line_per_input(tiny_run):
    run_dir, _ = tiny_run
    result = CliRunner().invoke(app, ["predict", "--model", str(run_dir), "a wonderful story", "a dull story"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [r["input"] for r in records] == [{"text": "a wonderful story"}, {"text": "a dull story"}]
    assert all(r["label"] in ("negative", "positive") and 0.5 <= r["score"] <= 1 for r in records)


def test_predict_reads_a_file_and_prints_a_table(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    inputs = tmp_path / "inputs.txt"
    inputs.write_text("great film\n\nawful film\n")
    result = CliRunner(env={"COLUMNS": "200"}).invoke(
        app, ["predict", "--model", str(run_dir), "--file", str(inputs), "--format", "table"])
    assert result.exit_code == 0, result.output
    assert "great film" in result.stdout and "awful film" in result.stdout
    bad = CliRunner().invoke(app, ["predict", "--model", str(run_dir), "--format", "xml", "hello"])
    assert bad.exit_code == 2 and bad.stderr.strip().endswith("--format must be jsonl or table, not 'xml'")


def test_prediction_table_shows_each_task_input_as_text():
    from adapt.ui import display_input

    assert display_input({"text": "good film"}) == "good film"
    assert display_input({"id": "1", "question": "Who?", "context": "Ann came."}) == "Who?"
    assert display_input({"source": "A man in a hat."}) == "A man in a hat."
    assert display_input({"prompt": "ROMEO:"}) == "ROMEO:"
    assert display_input({"tokens": ["Angela", "Merkel", "spoke"]}) == "Angela Merkel spoke"
    assert display_input({"a": 1}) == "{'a': 1}"
