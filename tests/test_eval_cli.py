"""`adapt eval` through Typer: file scoring, JSON/--output, errors, model runner hand-off, perplexity."""

import json
import sys
import types

import typer
from typer.testing import CliRunner

from adapt.cli_eval import eval_command
from adapt.errors import AdaptError

app = typer.Typer()
app.command("eval")(eval_command)


@app.command("noop")
def _noop() -> None:
    """Second command so that `eval` stays a subcommand, as in the real CLI."""


def run(*args):
    return CliRunner().invoke(app, ["eval", *args])


def test_files_table_json_and_output(tmp_path):
    (tmp_path / "h.txt").write_text("the cat sat on the mat\na dog runs fast\n")
    (tmp_path / "r.txt").write_text("the cat sat on the mat\na dog runs quickly\n")
    table = run("-m", "bleu", "-p", str(tmp_path / "h.txt"), "-r", str(tmp_path / "r.txt"))
    assert table.exit_code == 0 and "bleu" in table.output
    result = run("-m", "chrf", "-m", "rouge", "-p", str(tmp_path / "h.txt"), "-r", str(tmp_path / "r.txt"),
                 "--ci", "0.9", "--bootstrap-samples", "20", "--json", "--output", str(tmp_path / "o.json"))
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert set(printed["scores"]) == {"chrf", "rouge"} and "rougeL" in printed["ci"]["rouge"]
    assert json.loads((tmp_path / "o.json").read_text())["examples"][1]["prediction"] == "a dog runs fast"


def test_errors_surface_as_adapt_error(tmp_path):
    (tmp_path / "h.txt").write_text("a\nb\n")
    (tmp_path / "r.txt").write_text("a\n")
    result = run("-m", "bleu", "-p", str(tmp_path / "h.txt"), "-r", str(tmp_path / "r.txt"))
    assert isinstance(result.exception, AdaptError) and "has 2 examples but" in str(result.exception)
    assert isinstance(run("-m", "perplexity", "-p", "x").exception, AdaptError)


def test_model_evaluation_calls_runner(monkeypatch):
    calls = []
    runner = types.ModuleType("adapt.runner")
    rows = [{"text": "because [the leads] are", "label": "pos", "prediction": "neg"}]
    runner.evaluate_model = lambda *a: calls.append(a) or {"metrics": {"eval_accuracy": 0.9}, "predictions": rows,
                                                            "data": "d.jsonl"}
    monkeypatch.setitem(sys.modules, "adapt.runner", runner)
    result = run("--model", "out/dir", "--data", "d.jsonl", "--set", "task.max_length=64", "--json")
    assert result.exit_code == 0, result.output
    assert calls == [("out/dir", "d.jsonl", None, ["task.max_length=64"], False)]
    assert json.loads(result.stdout)["scores"]["model"] == {"eval_accuracy": 0.9}


def test_perplexity_of_a_saved_tiny_model(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = "the cat sat on a mat and dog ran".split()
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["<unk>", *words])}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>").save_pretrained(tmp_path / "m")
    config = GPT2Config(vocab_size=10, n_positions=32, n_embd=8, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0)
    torch_model = GPT2LMHeadModel(config)
    torch_model.save_pretrained(tmp_path / "m")
    (tmp_path / "t.txt").write_text("the cat sat on a mat\nand the dog ran on the mat\n")
    result = run("-m", "perplexity", "--model", str(tmp_path / "m"), "--text-file", str(tmp_path / "t.txt"),
                 "--max-length", "4", "--stride", "2", "--batch-size", "2", "--json")
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)["scores"]["perplexity"]
    assert scores["tokens"] == 13 - 1 and scores["max_length"] == 4 and 1 < scores["perplexity"] < 100
