"""Masked-LM task: documents and blocks (run_mlm's group_texts), masking by transformers' collator (fixed per
block for validation, whole words), masked-token perplexity, the speed layer's logits, a tiny run whose saved
folder the classification task loads as its encoder, and one-line refusals of bad input."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from conftest import NEGATIVE, POSITIVE, smollm2_dir, write_table
from safetensors.torch import load_file
from typer.testing import CliRunner

from adapt.cli import app
from adapt.errors import AdaptError
from adapt.recipe import resolve_recipe
from adapt.tasks import get_task
from adapt.tasks.masked_lm import documents_of_text, group_texts

SENTENCES = POSITIVE + NEGATIVE


def mlm_task(model: Path, *overrides):
    """The mlm task of the packaged recipe on `model`, its tokenizer loaded."""
    task = get_task(resolve_recipe("mlm", [("model", str(model)), *overrides]))
    task.load_tokenizer(str(model))
    return task


def raw_texts(texts):
    from datasets import Dataset

    return Dataset.from_dict({"text": list(texts)})


# ---- documents and blocks ------------------------------------------------------------------------------
def test_documents_are_lines_or_blank_line_paragraphs():
    assert documents_of_text("a b\nc\n\n\nd\n") == ["a b c", "d"]  # paragraphs, their lines joined
    assert documents_of_text("one\ntwo\r\n  \nthree") == ["one two", "three"]
    assert documents_of_text("one\ntwo\nthree\n") == ["one", "two", "three"]  # no blank line: one per line
    assert documents_of_text("\n \n") == []


def test_group_texts_concatenates_and_keeps_the_short_last_block():
    blocks, owners = group_texts({"input_ids": [[1, 2, 3], [4, 5]], "special_tokens_mask": [[1, 0, 1], [1, 1]]}, 2)
    assert blocks == {"input_ids": [[1, 2], [3, 4], [5]], "special_tokens_mask": [[1, 0], [1, 1], [1]]}
    assert owners == [0, 0, 1]


def test_blocks_carry_special_tokens_and_every_token(tiny_bert):
    task = mlm_task(tiny_bert, ("task_options.line_by_line", False), ("train.max_length", 8))
    raw = raw_texts(SENTENCES[:6])
    features = task.featurize(raw, "train")
    expected = [i for ids in task.tokenizer(SENTENCES[:6])["input_ids"] for i in ids]  # [CLS] ... [SEP] each
    assert [i for ids in features["input_ids"] for i in ids] == expected
    assert all(n == 8 for n in features["length"][:-1]) and 0 < features["length"][-1] <= 8
    assert "labels" not in features.column_names  # training blocks are masked when drawn


def test_line_by_line_keeps_one_example_per_document_cut_at_max_length(tiny_bert):
    task = mlm_task(tiny_bert, ("task_options.line_by_line", True), ("train.max_length", 8))
    long = "the best movie of the year by far , go see it"
    features = task.featurize(raw_texts(["great film", long]), "train")
    assert features["input_ids"][0] == task.tokenizer("great film")["input_ids"]
    assert len(features["input_ids"][1]) == 8 and features["input_ids"][1][-1] == task.tokenizer.sep_token_id
    assert features["example"][:] == [0, 1]


# ---- masking ----------------------------------------------------------------------------------------
def test_training_batches_are_masked_by_transformers_collator(tiny_bert):
    from transformers import DataCollatorForLanguageModeling

    task = mlm_task(tiny_bert, ("task_options.line_by_line", True), ("train.seed", 3))
    features = task.featurize(raw_texts(SENTENCES), "train")
    rows = features[list(range(len(features)))]
    batch = task.collate(rows)
    reference = DataCollatorForLanguageModeling(task.tokenizer, mlm_probability=0.15, seed=3)
    expected = reference([{k: rows[k][i] for k in ("input_ids", "attention_mask", "special_tokens_mask")}
                          for i in range(len(features))])
    for key in ("input_ids", "attention_mask", "labels"):
        assert torch.equal(batch[key], expected[key]), key
    # only ordinary tokens are chosen, and every chosen position's label is the original token
    chosen = batch["labels"] != -100
    padded_ids = torch.tensor([ids + [0] * (batch["input_ids"].shape[1] - len(ids)) for ids in rows["input_ids"]])
    special = torch.tensor([m + [1] * (batch["input_ids"].shape[1] - len(m)) for m in rows["special_tokens_mask"]])
    assert chosen.any() and not (chosen & special.bool()).any()
    assert torch.equal(batch["labels"][chosen], padded_ids[chosen])
    assert torch.equal(batch["input_ids"][~chosen], padded_ids[~chosen])  # the rest is untouched


def test_masking_rates_are_15_percent_and_80_10_10(tiny_bert):
    task = mlm_task(tiny_bert, ("task_options.line_by_line", False), ("train.max_length", 128))
    text = " ".join(SENTENCES * 40)
    features = task.featurize(raw_texts([text]), "validation")
    ids = torch.tensor([i for row in features["input_ids"] for i in row])
    labels = torch.tensor([i for row in features["labels"] for i in row])
    chosen = labels != -100
    ordinary = len(ids) - 2  # one [CLS] and one [SEP]
    assert abs(int(chosen.sum()) / ordinary - 0.15) < 0.02
    as_mask = (ids[chosen] == task.tokenizer.mask_token_id).float().mean()
    unchanged = (ids[chosen] == labels[chosen]).float().mean()
    assert abs(float(as_mask) - 0.8) < 0.04 and abs(float(unchanged) - 0.1) < 0.03


def test_validation_masks_are_fixed_per_block(tiny_bert):
    task = mlm_task(tiny_bert, ("task_options.line_by_line", True))
    raw = raw_texts(SENTENCES)
    torch.manual_seed(123)
    first = task.featurize(raw, "validation")
    state = torch.get_rng_state()
    again = mlm_task(tiny_bert, ("task_options.line_by_line", True), ("train.seed", 99)).featurize(raw, "validation")
    assert torch.equal(torch.get_rng_state(), state)  # torch's global generator is left alone
    assert first["input_ids"] == again["input_ids"] and first["labels"] == again["labels"]
    # each block's mask comes from its own seed: the first blocks of a shorter split are masked the same
    prefix = task.featurize(raw.select(range(3)), "validation")
    assert prefix["labels"] == first["labels"][:3] and prefix["input_ids"] == first["input_ids"][:3]
    assert sum(label != -100 for row in first["labels"] for label in row) > 0
    batch = task.collate(first[[0, 1, 2]])
    assert set(batch) == {"input_ids", "attention_mask", "labels"}


def test_whole_word_masking_masks_every_piece_of_a_chosen_word(tiny_bert):
    task = mlm_task(tiny_bert, ("task_options.line_by_line", True), ("task_options.whole_word_mask", True),
                    ("task_options.mlm_probability", 0.5))
    text = "unbelievably overwrought screenwriting undermines otherworldly cinematography"
    encoding = task.tokenizer(text)
    words = encoding.word_ids()
    assert len(set(w for w in words if w is not None)) < len(encoding["input_ids"]) - 2  # some words have pieces
    features = task.featurize(raw_texts([text] * 20), "validation")
    seen_partial = False
    for ids, labels in zip(features["input_ids"], features["labels"]):
        for word in set(w for w in words if w is not None):
            positions = [i for i, w in enumerate(words) if w == word]
            chosen = [labels[i] != -100 for i in positions]
            assert all(chosen) or not any(chosen), (word, chosen)
            seen_partial |= all(chosen)
            assert all(ids[i] == task.tokenizer.mask_token_id for i in positions if labels[i] != -100)
    assert seen_partial


# ---- loss and score ---------------------------------------------------------------------------------
def test_loss_is_transformers_masked_lm_loss(tiny_bert):
    task = mlm_task(tiny_bert, ("task_options.line_by_line", True))
    model = task.build_model(str(tiny_bert)).eval()
    batch = task.collate(task.featurize(raw_texts(SENTENCES[:8]), "validation")[:])
    with torch.no_grad():
        summed, count = task.loss(model, batch)
        expected = model(**batch).loss  # transformers' BertForMaskedLM: mean cross-entropy over labelled positions
        out = task.eval_step(model, batch)
    assert int(count) == task.count_targets(batch) == int((batch["labels"] != -100).sum()) > 0
    assert float(summed / count) == pytest.approx(float(expected), rel=1e-5)
    assert float(out["nll"].sum()) == pytest.approx(float(summed), rel=1e-5)
    assert out["tokens"].tolist() == (batch["labels"] != -100).sum(-1).tolist()


def test_score_is_token_weighted_masked_perplexity(tiny_bert):
    task = mlm_task(tiny_bert)
    # two rows: 2.0 nats over 1 masked token, 1.0 nats over 3: mean NLL 3/4, not the mean of row means (1.1667)
    scores = task.score([{"nll": 2.0, "tokens": 1}, {"nll": 1.0, "tokens": 3}, {"nll": 0.0, "tokens": 0}], None)
    assert scores["nll"] == scores["loss"] == 0.75 and scores["tokens"] == 4
    assert scores["perplexity"] == pytest.approx(math.exp(0.75))
    with pytest.raises(AdaptError, match="no token of the evaluation text was masked"):
        task.score([{"nll": 0.0, "tokens": 0}], None)


def test_speed_layer_gives_the_padded_logits_and_loss(tiny_bert):
    from adapt.speed import padding_free, prepare_model

    task = mlm_task(tiny_bert, ("task_options.line_by_line", True), ("train.speed_layer", True),
                    ("train.padding_free", True))
    reference = task.build_model(str(tiny_bert))
    fast = prepare_model(copy.deepcopy(reference), task, task.recipe.train)
    assert padding_free.per_token_head(fast) and getattr(fast.base_model, "_adapt_padding_free", None) is not None
    batch = task.collate(task.featurize(raw_texts(SENTENCES[:6]), "validation")[:])
    assert (batch["attention_mask"] == 0).any()  # ragged: the pads are skipped by the fast path
    for model in (reference, fast):
        model.eval()
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        assert torch.allclose(fast(**inputs).logits[real], reference(**inputs).logits[real], atol=1e-4)
        assert float(task.loss(fast, batch)[0]) == pytest.approx(float(task.loss(reference, batch)[0]), rel=1e-5)


# ---- a run and its saved folder ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mlm_run(tiny_bert, tmp_path_factory):
    from adapt.train import finetune

    root = tmp_path_factory.mktemp("mlm_run")
    text = root / "text.txt"
    text.write_text("\n".join(SENTENCES * 3) + "\n", encoding="utf-8")
    recipe = resolve_recipe("mlm", [("model", str(tiny_bert)), ("data.train", str(text)), ("data.validation", None),
                                    ("data.columns.text", "text"), ("output_dir", str(root / "run")),
                                    ("tracking", []), ("train.max_steps", 12), ("train.batch_size", 8),
                                    ("train.lr", 2e-3), ("train.eval_on_start", True), ("train.seed", 5)])
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ADAPT_CACHE", str(root / "cache"))
        final = finetune(recipe)
    return root / "run", final


def test_run_lowers_masked_perplexity(mlm_run):
    _, final = mlm_run
    before, after = final["initial_validation"], final["validation"]
    assert before["tokens"] == after["tokens"] > 0  # the same masked tokens scored before and after
    assert after["perplexity"] < before["perplexity"]


def test_saved_folder_is_a_masked_lm_whose_encoder_the_classifier_loads(mlm_run, tmp_path):
    from transformers import AutoModelForMaskedLM, pipeline

    run, _ = mlm_run
    saved = load_file(run / "model.safetensors")
    assert any(k.startswith("cls.predictions.") for k in saved)
    model = AutoModelForMaskedLM.from_pretrained(run)
    fill = pipeline("fill-mask", model=model, tokenizer=str(run))
    assert len(fill("a [MASK] film", top_k=3)) == 3
    classifier_task = get_task(resolve_recipe("sentiment", [("model", str(run))]))
    classifier_task.load_tokenizer(str(run))
    classifier_task.label_names = ["negative", "positive"]
    classifier = classifier_task.build_model(str(run))
    encoder = {f"bert.{k}": v for k, v in classifier.base_model.state_dict().items()}
    shared = [k for k in encoder if k in saved]
    assert len(shared) == len([k for k in encoder if not k.startswith("bert.pooler.")]) > 20
    assert all(torch.equal(encoder[k], saved[k]) for k in shared)


def test_untied_embeddings_train_every_row_random_tokens_reach(tiny_bert_builder, tmp_path):
    # random replacement feeds token ids the training text never holds: the speed layer's used-rows optimizer
    # (which steps only the rows of the data's tokens of an untied input embedding) must not be used
    from adapt.train import finetune

    model = tiny_bert_builder(tmp_path / "untied", tie_word_embeddings=False)
    text = tmp_path / "text.txt"
    text.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    recipe = resolve_recipe("mlm", [("model", str(model)), ("data.train", str(text)), ("data.validation", None),
                                    ("output_dir", str(tmp_path / "run")), ("tracking", []), ("train.max_steps", 3),
                                    ("train.batch_size", 8), ("train.mixed_precision", "no"),
                                    ("train.weight_decay", 0.0), ("task_options.mlm_probability", 0.5), ("task_options.mask_replace_prob", 0.0),
                                    ("task_options.random_replace_prob", 1.0)])
    before = load_file(model / "model.safetensors")["embeddings.word_embeddings.weight"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ADAPT_CACHE", str(tmp_path / "cache"))
        finetune(recipe)
    after = load_file(tmp_path / "run" / "model.safetensors")["bert.embeddings.word_embeddings.weight"]
    data_ids = set(i for ids in get_task(recipe).load_tokenizer(str(model))(SENTENCES)["input_ids"] for i in ids)
    unused = [i for i in range(len(before)) if i not in data_ids]
    changed = [i for i in unused if not torch.equal(before[i], after[i])]  # no weight decay: only gradients
    assert len(changed) > 10


def test_peft_is_refused():
    with pytest.raises(AdaptError, match="remove the recipe's peft section"):
        get_task(resolve_recipe("mlm", [("peft", {"method": "lora"})]))


def test_bad_masking_shares_are_refused():
    with pytest.raises(AdaptError, match=r"task_options.mask_replace_prob \(0.9\) \+ task_options.random_replace_prob "
                                         r"\(0.2\) exceed 1"):
        get_task(resolve_recipe("mlm", [("task_options.mask_replace_prob", 0.9),
                                        ("task_options.random_replace_prob", 0.2)]))


# ---- bad input: one line, exit 2, nothing written -------------------------------------------------------
def finetune_cli(model: Path, out: Path, *args: str):
    return CliRunner().invoke(app, ["finetune", "--recipe", "mlm", "--model", str(model), "--output-dir", str(out),
                                    "--max-steps", "1", "tracking=[]", *args])


def assert_one_line(result, out: Path, *fragments: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = [line for line in result.stderr.splitlines() if line.strip() and "%|" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert not out.exists()


@pytest.mark.parametrize("content", ["", "\n  \n\n\t\n"], ids=["empty file", "all lines blank"])
def test_text_file_without_text(tiny_bert, tmp_path, adapt_cache, content):
    path = tmp_path / "corpus.txt"
    path.write_text(content, encoding="utf-8")
    assert_one_line(finetune_cli(tiny_bert, tmp_path / "out", "--data", str(path), "data.validation=null"),
                    tmp_path / "out", f"{path}: the file has no text", "one document per line")


def test_missing_text_column(tiny_bert, tmp_path, adapt_cache):
    path = write_table(tmp_path / "d.csv", [(s, "x") for s in SENTENCES], ("review", "label"))
    assert_one_line(finetune_cli(tiny_bert, tmp_path / "out", "--data", str(path), "data.validation=null"),
                    tmp_path / "out", f"{path}: no column 'sentence'", "columns: review, label",
                    "data.columns.text")


def test_text_column_all_empty(tiny_bert, tmp_path, adapt_cache):
    path = write_table(tmp_path / "d.csv", [("", "x"), ("  ", "y")], ("sentence", "label"))
    assert_one_line(finetune_cli(tiny_bert, tmp_path / "out", "--data", str(path), "data.validation=null"),
                    tmp_path / "out", f"{path}: every row's 'sentence' is empty")


def test_decoder_without_mask_token(tmp_path, adapt_cache):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir())  # not dequantized again into adapt_cache
    folder = tmp_path / "llama"
    LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 num_key_value_heads=1, vocab_size=len(tokenizer))).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    path = write_table(tmp_path / "d.csv", [(s, "x") for s in SENTENCES], ("sentence", "label"))
    assert_one_line(finetune_cli(folder, tmp_path / "out", "--data", str(path), "data.validation=null"),
                    tmp_path / "out", f"{folder}: its tokenizer has no mask token", "use task 'clm'")
