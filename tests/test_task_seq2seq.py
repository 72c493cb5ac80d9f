"""Seq2seq task: parallel line files, label shifting and padding, prefixes, multi-reference scoring, and
few-step summarize/translate runs on tiny random models whose output folders load with plain transformers."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch
from sacrebleu.metrics import BLEU

from adapt.errors import AdaptError
from adapt.recipe import resolve_recipe
from adapt.tasks import get_task
from adapt.tasks.seq2seq import max_reference_rouge, translation_scores, truncate_keeping_end

PAIRS = [
    ("a man is sleeping on a green couch", "ein mann schlaft auf einem grunen sofa"),
    ("two dogs run in the park", "zwei hunde rennen im park"),
    ("a girl reads a book", "ein madchen liest ein buch"),
    ("the boy plays football outside near the trees", "der junge spielt draussen fussball bei den baumen"),
    ("a woman sings", "eine frau singt"),
    ("people walk down a busy street in the city", "menschen gehen eine belebte strasse in der stadt entlang"),
    ("a cat sleeps", "eine katze schlaft"),
    ("three children are swimming in a lake", "drei kinder schwimmen in einem see"),
]
GEN = [("task_options.num_beams", 2), ("task_options.max_new_tokens", 6), ("task_options.max_target_length", 12)]


def write_lines(path: Path, lines: list[str]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("".join(line + "\n" for line in lines))
    return path


def write_parallel(folder: Path, split: str, pairs=PAIRS) -> Path:
    write_lines(folder / f"{split}.de.gz", [t for _, t in pairs])
    return write_lines(folder / f"{split}.en.gz", [s for s, _ in pairs])


def write_scitldr(path: Path, n: int = 8) -> Path:
    """SciTLDR-shaped JSONL: source = sentence list, target = several TLDRs."""
    rows = [{"source": [f"we study model {i}.", "results improve a lot."],
             "target": [f"model {i} improves results", "it works"], "paper_id": str(i)} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory) -> Path:
    """A 2-layer random T5 (d_model 32) with the MiniLM WordPiece tokenizer: [PAD] starts decoding, [SEP] ends."""
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    from adapt.assets import resolve_model_path

    folder = tmp_path_factory.mktemp("tiny_t5")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("embedded:minilm"))
    config = T5Config(vocab_size=len(tokenizer), d_model=32, d_ff=64, d_kv=16, num_layers=2, num_heads=2,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.sep_token_id,
                      decoder_start_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    T5ForConditionalGeneration(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def make_task(recipe: str, overrides: list[tuple]):
    task = get_task(resolve_recipe(recipe, overrides))
    task.load_tokenizer(task.recipe.model)
    return task


def test_parallel_line_files_pair_up_and_mismatches_name_both_files(tmp_path, tiny_bert):
    source = write_parallel(tmp_path, "train")
    task = make_task("translate-encdec", [("model", str(tiny_bert))])
    ds = task.read_source(str(source), "train")
    assert ds[1] == {"source": PAIRS[1][0], "target": PAIRS[1][1], "references": [PAIRS[1][1]]}
    write_lines(tmp_path / "bad.en.gz", ["one", "two"])
    write_lines(tmp_path / "bad.de.gz", ["eins"])
    with pytest.raises(AdaptError, match=r"bad\.en\.gz has 2 lines but .*bad\.de\.gz has 1"):
        task.read_source(str(tmp_path / "bad.en.gz"), "train")
    no_lang = make_task("translate-encdec", [("model", str(tiny_bert)), ("task_options", {})])
    with pytest.raises(AdaptError, match="source_lang and target_lang"):
        no_lang.read_source(str(source), "train")


def test_jsonl_lists_join_sources_and_keep_every_reference(tmp_path, tiny_bert):
    task = make_task("summarize", [("model", str(tiny_bert))])
    ds = task.read_source(str(write_scitldr(tmp_path / "s.jsonl")), "train")
    assert ds[0]["source"] == "we study model 0. results improve a lot."
    assert ds[0]["target"] == "model 0 improves results"
    assert ds[0]["references"] == ["model 0 improves results", "it works"]
    (tmp_path / "empty.jsonl").write_text(json.dumps({"source": ["x"], "target": []}) + "\n")
    with pytest.raises(AdaptError, match=r"empty\.jsonl: line 1: 'target' is null or empty"):
        task.read_source(str(tmp_path / "empty.jsonl"), "train")


def test_labels_drop_cls_pad_to_minus_100_and_shift_to_decoder_inputs(tmp_path, tiny_bert):
    from transformers.models.encoder_decoder.modeling_encoder_decoder import shift_tokens_right

    task = make_task("translate-encdec", [("model", str(tiny_bert)), ("task_options.source_prefix", "translate: ")])
    tok = task.tokenizer
    raw = task.read_source(str(write_parallel(tmp_path, "train", PAIRS[:2])), "train")
    features = task.featurize(raw, "train")
    first = features[0]
    assert tok.decode(first["input_ids"], skip_special_tokens=True).startswith("translate : a man is sleeping")
    expected = tok(PAIRS[0][1], add_special_tokens=False)["input_ids"] + [tok.sep_token_id]  # no [CLS]
    assert first["labels"] == expected
    assert first["length"] == len(first["input_ids"]) + len(expected)
    batch = task.collate(features[:2])
    short = min(range(2), key=lambda i: len(features[i]["labels"]))
    n_short = len(features[short]["labels"])
    assert (batch["labels"][short, n_short:] == -100).all() and (batch["labels"][short, :n_short] >= 0).all()
    decoder_inputs = shift_tokens_right(batch["labels"], tok.pad_token_id, tok.cls_token_id)
    assert decoder_inputs[0].tolist()[:3] == [tok.cls_token_id, *expected[:2]]
    assert decoder_inputs[short, n_short + 1:].eq(tok.pad_token_id).all()
    assert truncate_keeping_end([5, 6, 7, 102], 3) == [5, 6, 102]


def test_generated_length_counts_up_to_the_first_end_token(tmp_path, tiny_bert):
    recipe = resolve_recipe("translate-encdec", [("model", str(tiny_bert))])
    task = get_task(recipe)
    task.load_tokenizer(str(tiny_bert))
    ids = task.decoder_token_ids
    start, eos, pad = ids["decoder_start_token_id"], ids["eos_token_id"], ids["pad_token_id"]
    word = next(t for t in range(1000, 2000) if t not in (start, eos, pad))
    rows = [[start, word, word, eos, eos, eos],  # beam search pads finished rows with eos
            [start, word, eos, pad, pad, pad],
            [start, word, word, word, word, word]]  # never ended: cut by max_new_tokens
    predictions = task.postprocess([{"tokens": torch.tensor(r)} for r in rows], None, None)
    assert [p["generated_tokens"] for p in predictions] == [3, 2, 5]


def test_rouge_takes_best_reference_and_bleu_uses_reference_streams():
    scores = max_reference_rouge(["the cat sat. it slept."], [["a dog ran", "the cat sat. it slept."]])
    assert scores["rouge1"] == pytest.approx(1.0) and scores["rougeLsum"] == pytest.approx(1.0)
    hyps = ["the cat sat on the mat", "a dog runs fast"]
    refs = [["the cat sat on a mat", "the cat is on the mat"], ["a dog runs quickly"]]
    streams = [["the cat sat on a mat", "a dog runs quickly"], ["the cat is on the mat", None]]
    expected = BLEU().corpus_score(hyps, streams)
    assert translation_scores(hyps, refs)["bleu"] == pytest.approx(expected.score)


def generate_with_transformers(folder: Path, texts: list[str]) -> list[str]:
    """What a user without adapt gets: AutoModelForSeq2SeqLM + the saved generation_config.
    (transformers 5 removed the summarization/translation/text2text-generation pipelines.)"""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSeq2SeqLM.from_pretrained(folder, use_safetensors=True).eval()
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        out = model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    return [t.strip() for t in tokenizer.batch_decode(out, skip_special_tokens=True)]


def test_summarize_warm_started_pair_end_to_end(tmp_path, tiny_bert, adapt_cache):
    from adapt.runner import load_trained, predict_stream
    from adapt.train import finetune

    train = write_scitldr(tmp_path / "train.jsonl", 12)
    run = tmp_path / "run"
    final = finetune(resolve_recipe("summarize", [
        ("model", str(tiny_bert)), ("data.train", str(train)), ("data.validation", str(train)), ("data.test", None),
        ("train.max_steps", 3), ("train.batch_size", 4), ("output_dir", str(run)), ("tracking", []), *GEN]))
    assert 0 <= final["validation"]["rougeL"] <= 1 and final["validation"]["gen_len"] <= 6
    config = json.loads((run / "config.json").read_text())
    assert config["model_type"] == "encoder-decoder" and config["decoder_start_token_id"] == 101
    generation = json.loads((run / "generation_config.json").read_text())
    assert generation["num_beams"] == 2 and generation["max_new_tokens"] == 6 and generation["eos_token_id"] == 102
    source = "we study model 3. results improve a lot."
    task, model = load_trained(str(run))
    predicted = next(predict_stream(task, model, [source]))["generated_text"]
    assert predicted == generate_with_transformers(run, [source])[0]
    rows = [json.loads(line) for line in (run / "predictions_validation.jsonl").read_text().splitlines()]
    assert rows[0]["references"] == ["model 0 improves results", "it works"] and "prediction" in rows[0]


def test_translate_tiny_t5_end_to_end_with_line_files(tmp_path, tiny_t5, adapt_cache):
    from adapt.train import finetune

    train = write_parallel(tmp_path, "train")
    val = write_parallel(tmp_path, "val", PAIRS[:4])
    run = tmp_path / "run"
    final = finetune(resolve_recipe("translate-encdec", [
        ("model", str(tiny_t5)), ("data.train", str(train)), ("data.validation", str(val)), ("data.test", str(val)),
        ("train.max_steps", 3), ("train.batch_size", 4), ("output_dir", str(run)), ("tracking", []),
        ("task_options.source_prefix", "translate English to German: "), *GEN]))
    assert final["validation"]["examples"] == 4 and "bleu" in final["validation"] and "chrf" in final["test"]
    assert json.loads((run / "config.json").read_text())["model_type"] == "t5"
    assert "pipeline_tag: translation" in (run / "README.md").read_text()
    assert len(generate_with_transformers(run, [PAIRS[0][0]])) == 1
