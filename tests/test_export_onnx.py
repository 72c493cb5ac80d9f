"""`adapt export --format onnx`: tiny classification / NER / QA / causal-LM (Llama, with past key values) / LoRA
runs exported through the CLI; the ONNX graph, run by onnxruntime through adapt's own task code, gives the labels,
tags and spans `adapt predict` gives; greedy decoding on the exported cache equals `generate`; bad input is one
line and exit code 2 with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from adapt.cli import app
from adapt.errors import AdaptError
from conftest import build_tiny_llama, run_tiny_finetune, sentiment_rows

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

NAMES, PLACES = ["Alice", "Bob", "Carol"], ["Paris", "Berlin", "Rome"]


def cli(*args: str):
    return CliRunner().invoke(app, list(args))


def export(run: Path, out: Path, *extra: str) -> dict:
    """`adapt export RUN --format onnx --output OUT` must succeed; returns its onnx_export.json."""
    result = cli("export", str(run), "--format", "onnx", "--output", str(out), *extra)
    assert result.exit_code == 0, result.output
    assert "parity (onnxruntime vs PyTorch, fp32, sample inputs): max |diff|" in result.output
    return json.loads((out / "onnx_export.json").read_text())


def both_predictions(run: Path, out: Path, lines: list[str]) -> tuple[list[dict], list[dict]]:
    """(`adapt predict` records of the run, the same records from the exported graph on onnxruntime)."""
    from adapt.export_onnx import load_exported
    from adapt.runner import load_trained, predict_stream

    task, model = load_trained(str(run))
    expected = list(predict_stream(task, model, lines, batch_size=4))
    task, graph = load_exported(str(out))
    return expected, list(predict_stream(task, graph, lines, batch_size=4))


# ---- runs -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def sentiment_run(tiny_bert, sentiment_csv_shared, tmp_path_factory, cache) -> Path:
    root = tmp_path_factory.mktemp("onnx_sentiment")
    run_tiny_finetune(tiny_bert, sentiment_csv_shared, root / "run", cache, overrides=[("train.max_steps", 4)])
    return root / "run"


def _finetune(recipe: str, pairs: list, cache: Path):
    from adapt.recipe import resolve_recipe
    from adapt.train import finetune

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ADAPT_CACHE", str(cache))
        finetune(resolve_recipe(recipe, [*pairs, ("tracking", [])]))


@pytest.fixture(scope="module")
def ner_run(tiny_bert, tmp_path_factory, cache) -> Path:
    root = tmp_path_factory.mktemp("onnx_ner")
    sentences = [[(n, "B-PER"), ("visited", "O"), (p, "B-LOC"), (".", "O")] for n in NAMES for p in PLACES]
    train = root / "train.txt"
    train.write_text("\n\n".join("\n".join(f"{w} X X {t}" for w, t in s) for s in sentences * 2) + "\n")
    _finetune("ner", [("model", str(tiny_bert)), ("data.train", str(train)), ("data.validation", str(train)),
                      ("data.test", None), ("train.max_steps", 4), ("train.batch_size", 8),
                      ("output_dir", str(root / "run"))], cache)
    return root / "run"


@pytest.fixture(scope="module")
def qa_run(tiny_bert, tmp_path_factory, cache) -> Path:
    from test_task_qa import squad_document, write_json

    root = tmp_path_factory.mktemp("onnx_qa")
    _finetune("qa", [("model", str(tiny_bert)), ("data.train", write_json(root / "squad.json", squad_document(6))),
                     ("train.max_steps", 3), ("train.batch_size", 4), ("train.max_length", 48),
                     ("task_options.doc_stride", 16), ("output_dir", str(root / "run"))], cache)
    return root / "run"


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory, cache) -> Path:
    root = tmp_path_factory.mktemp("onnx_llama")
    build_tiny_llama(root / "base")
    pairs = root / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"Add {i} and 1.", "completion": str(i + 1)}) + "\n"
                             for i in range(24)))
    _finetune("clm-instruct", [("model", str(root / "base")), ("data.train", str(pairs)), ("train.max_steps", 2),
                               ("train.batch_size", 4), ("train.max_length", 256), ("train.lr", 1e-2),
                               ("task_options.max_new_tokens", 8), ("output_dir", str(root / "run"))], cache)
    return root / "run"


# ---- parity with `adapt predict` --------------------------------------------------------------------------
def test_sentiment_export_is_a_loadable_folder_with_dynamic_axes_and_same_labels(sentiment_run, tmp_path):
    import onnxruntime
    from transformers import AutoConfig, AutoTokenizer

    out = tmp_path / "onnx"
    meta = export(sentiment_run, out)
    assert meta["inputs"] == ["input_ids", "attention_mask", "token_type_ids"] and meta["outputs"] == ["logits"]
    assert 0 <= meta["max_abs_diff"] < 1e-4 and meta["past_key_values"] is False
    assert {"model.onnx", "config.json", "tokenizer.json", "recipe.yaml", "README.md"} <= {p.name for p in out.iterdir()}
    # a plain onnxruntime / transformers user needs nothing from adapt
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.shape for i in session.get_inputs()] == [["batch", "sequence"]] * 3
    assert AutoConfig.from_pretrained(out).id2label == {0: "negative", 1: "positive"}
    encoded = AutoTokenizer.from_pretrained(out)(["great film", "a dull and tedious story, skip it", "ok"],
                                                 padding=True, return_tensors="np")
    assert session.run(None, dict(encoded))[0].shape == (3, 2)

    lines = [text for text, _ in sentiment_rows()]
    expected, got = both_predictions(sentiment_run, out, lines)
    assert [r["label"] for r in got] == [r["label"] for r in expected]
    assert max(abs(a["score"] - b["score"]) for a, b in zip(got, expected)) < 1e-5


def test_ner_export_gives_the_same_tags(ner_run, tmp_path):
    out = tmp_path / "onnx"
    meta = export(ner_run, out)
    assert meta["outputs"] == ["logits"] and meta["max_abs_diff"] < 1e-4
    lines = [f"{n} visited {p} ." for n in NAMES for p in PLACES] + ["Carol met Bob in Rome and Paris yesterday"]
    expected, got = both_predictions(ner_run, out, lines)
    assert [r["tags"] for r in got] == [r["tags"] for r in expected]
    assert [r.get("entities") for r in got] == [r.get("entities") for r in expected]


def test_qa_export_gives_the_same_spans(qa_run, tmp_path):
    from test_task_qa import NUMBERS

    out = tmp_path / "onnx"
    meta = export(qa_run, out)
    assert meta["outputs"] == ["start_logits", "end_logits"] and meta["max_abs_diff"] < 1e-4
    words = NUMBERS.split()
    lines = [json.dumps({"question": f"which pair follows {words[i]} ?", "context": f"list: {NUMBERS} and more"})
             for i in range(12)]
    expected, got = both_predictions(qa_run, out, lines)
    assert [(r["answer"], r["start"], r["end"]) for r in got] == [(r["answer"], r["start"], r["end"]) for r in expected]
    assert max(abs(a["score"] - b["score"]) for a, b in zip(got, expected)) < 1e-5


def test_llama_export_has_past_key_values_and_decodes_as_generate(llama_run, tmp_path):
    """Greedy decoding on onnxruntime, feeding each step's present.* back as past_key_values.*, produces the
    tokens transformers' `generate` produces on a left-padded batch."""
    import numpy as np
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adapt.export_onnx import OnnxRuntimeModel, position_ids_from_mask

    out = tmp_path / "onnx"
    meta = export(llama_run, out)
    assert meta["past_key_values"] is True and meta["max_abs_diff"] < 1e-4
    assert meta["inputs"][:3] == ["input_ids", "attention_mask", "position_ids"]
    assert meta["inputs"][3:] == ["past_key_values.0.key", "past_key_values.0.value", "past_key_values.1.key",
                                  "past_key_values.1.value"]
    assert meta["outputs"] == ["logits", "present.0.key", "present.0.value", "present.1.key", "present.1.value"]

    tokenizer = AutoTokenizer.from_pretrained(out, padding_side="left")
    batch = tokenizer(["Add 3 and 1.", "Add 12 and 1. Then add two."], padding=True, return_tensors="pt")
    model = AutoModelForCausalLM.from_pretrained(llama_run, use_safetensors=True).eval()
    expected = model.generate(**batch, max_new_tokens=6, do_sample=False, pad_token_id=2, eos_token_id=None)
    expected = expected[:, batch["input_ids"].shape[1]:]

    graph = OnnxRuntimeModel(out)
    ids, mask, cache, tokens = batch["input_ids"], batch["attention_mask"], None, []
    for _ in range(6):
        got = graph.run(ids, mask, position_ids_from_mask(mask, ids.shape[1]), cache)
        ids = torch.from_numpy(np.argmax(got[0][:, -1], axis=-1))[:, None]
        tokens.append(ids)
        cache, mask = got[1:], torch.cat([mask, torch.ones_like(ids)], dim=1)
    assert torch.equal(torch.cat(tokens, dim=1), expected)


def test_only_an_exporter_failure_on_the_cache_falls_back_to_a_graph_without_past(llama_run, tmp_path, monkeypatch):
    """The cache graph failing in the exporter (torch.export cannot trace it) gives a graph without past key
    values, said in the notes; any other error in that step is a bug: exit 2, nothing written."""
    from torch.onnx._internal.exporter._errors import TorchExportError

    from adapt import export_onnx

    def untraceable(*args):
        raise TorchExportError("Failed to export the model with torch.export. cache not traceable")

    monkeypatch.setattr(export_onnx, "_export_causal_lm", untraceable)
    meta = export(llama_run, tmp_path / "plain")
    assert meta["past_key_values"] is False and meta["inputs"] == ["input_ids", "attention_mask", "position_ids"]
    assert meta["notes"] == ["exported without past key values (TorchExportError: Failed to export the model with "
                             "torch.export. cache not traceable); each step re-reads the whole sequence"]

    def broken(*args):
        raise KeyError("a bug in adapt")

    monkeypatch.undo()  # the real cache export, on a broken prefill
    monkeypatch.setattr(export_onnx, "_prefill_cache", broken)
    result = cli("export", str(llama_run), "--format", "onnx", "--output", str(tmp_path / "o"))
    assert result.exit_code == 2 and "could not export the LlamaForCausalLM model (KeyError: 'a bug in adapt')" in (
        result.output), result.output
    assert not (tmp_path / "o").exists()


def test_lora_run_is_merged_before_export(tiny_bert, sentiment_csv_shared, tmp_path, cache):
    run = tmp_path / "lora"
    run_tiny_finetune(tiny_bert, sentiment_csv_shared, run, cache, overrides=[("peft", {"method": "lora"}),
                                                                               ("train.max_steps", 2)])
    assert (run / "adapter_config.json").exists()
    out = tmp_path / "onnx"
    meta = export(run, out)
    assert meta["max_abs_diff"] < 1e-4
    assert "peft" not in json.loads((out / "config.json").read_text()).get("architectures", [""])[0].lower()
    lines = [text for text, _ in sentiment_rows()[:12]]
    expected, got = both_predictions(run, out, lines)
    assert [r["label"] for r in got] == [r["label"] for r in expected]


# ---- the plain model only ----------------------------------------------------------------------------------
def test_export_loads_the_plain_model_not_the_speed_layer(sentiment_run):
    """The run trained with padding-free batches (its hooks and attention function); export's model has none,
    and a model carrying them is refused."""
    from adapt.export_onnx import check_plain, plain_model
    from adapt.runner import load_trained, trained_task
    from adapt.speed import padding_free

    task = trained_task(str(sentiment_run))
    assert task.recipe.train.speed_layer and task.recipe.train.padding_free
    task.load_tokenizer(str(sentiment_run))
    model = plain_model(task, str(sentiment_run))
    assert model.config._attn_implementation in ("eager", "sdpa")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    _, patched = load_trained(str(sentiment_run))  # what `adapt predict` runs: the speed layer installed
    if padding_free.unsupported(patched) is None:
        with pytest.raises(AdaptError, match="carries forward hooks"):
            check_plain(patched, "run")


# ---- bad input: one line, exit 2, nothing written ------------------------------------------------------------
def test_missing_packages_name_the_extra(sentiment_run, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    result = cli("export", str(sentiment_run), "--format", "onnx", "--output", str(tmp_path / "o"))
    assert result.exit_code == 2 and not (tmp_path / "o").exists()
    assert "ONNX export needs onnxscript (not installed); run: pip install 'adapt[export]'" in result.output


def test_unsupported_task_and_bad_flags(tmp_path, sentiment_run):
    run = tmp_path / "t5run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "recipe.yaml").write_text("task: seq2seq\nmodel: x\n")
    result = cli("export", str(run), "--format", "onnx", "--output", str(tmp_path / "o"))
    assert result.exit_code == 2 and "is a seq2seq run; ONNX export covers classification, ner, qa, clm" in result.output
    result = cli("export", str(sentiment_run), "--format", "tflite")
    assert result.exit_code == 2 and "--format must be onnx, not 'tflite'" in result.output
    result = cli("export", str(sentiment_run), "--format", "onnx", "--merge", "--output", str(tmp_path / "o"))
    assert result.exit_code == 2 and "--merge and --format onnx exclude each other" in result.output
    assert cli("export", "--format", "onnx").exit_code == 2
    assert not (tmp_path / "o").exists()


def test_non_empty_output_and_a_failed_parity_check_write_nothing(sentiment_run, tmp_path, monkeypatch):
    from adapt import export_onnx

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    result = cli("export", str(sentiment_run), "--format", "onnx", "--output", str(taken))
    assert result.exit_code == 2 and "is not empty; pass --overwrite" in result.output
    assert [p.name for p in taken.iterdir()] == ["notes.txt"]

    monkeypatch.setattr(export_onnx, "_parity", lambda *a: 3e-3)  # a graph computing something else
    result = cli("export", str(sentiment_run), "--format", "onnx", "--output", str(tmp_path / "o"))
    assert result.exit_code == 2 and "differs from PyTorch by up to 0.003 (limit 0.0001 in fp32); not written" in result.output
    assert not (tmp_path / "o").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_default_output_is_beside_the_run(tmp_path):
    from adapt.export_onnx import default_output

    assert default_output(str(tmp_path / "runs" / "sentiment")) == (tmp_path / "runs" / "sentiment-onnx").resolve()
