"""Sentence-pair classification (recipe `pairs`): two text columns encoded as one pair, trained end to end
on a tiny TSV and loaded back by the text-classification pipeline."""

import json

import pytest
from test_task_ner import tiny_bert

from adapt.recipe import resolve_recipe
from adapt.tasks import get_task

PAIRS = [("the cat sat on the mat", "a cat was sitting on the mat", 1),
         ("the cat sat on the mat", "stocks fell sharply today", 0),
         ("he bought a new car", "he purchased a new automobile", 1),
         ("he bought a new car", "the river flooded the town", 0)]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPT_CACHE", str(tmp_path / "cache"))


def pairs_tsv(path, rows) -> str:
    path.write_text("sentence1\tsentence2\tlabel\n" + "".join(f"{a}\t{b}\t{y}\n" for a, b, y in rows))
    return str(path)


def test_pairs_recipe_encodes_both_sentences(tmp_path):
    from adapt import assets

    recipe = resolve_recipe("pairs", [("data.train", pairs_tsv(tmp_path / "train.tsv", PAIRS))])
    task = get_task(recipe)
    task.load_tokenizer(assets.resolve_model_path("embedded:minilm"))
    raw = task.read_source(recipe.data.train, "train")
    assert raw.column_names == ["text", "label", "text_pair"]
    assert raw[0]["label"] == "equivalent" and raw[1]["label"] == "not_equivalent"
    task.setup({"train": raw})
    features = task.featurize(raw, "train")[0]
    pieces = task.tokenizer.convert_ids_to_tokens(features["input_ids"])
    separator = pieces.index("[SEP]")
    assert pieces[1:separator] == "the cat sat on the mat".split()
    assert set(features["token_type_ids"][separator + 1:]) == {1}  # the second sentence is segment B


def test_pairs_finetune_end_to_end(tmp_path):
    from transformers import pipeline

    from adapt.train import finetune

    out = tmp_path / "run"
    metrics = finetune(resolve_recipe("pairs", [
        ("model", tiny_bert(tmp_path / "tiny")), ("data.train", pairs_tsv(tmp_path / "train.tsv", PAIRS * 4)),
        ("data.validation", pairs_tsv(tmp_path / "valid.tsv", PAIRS)), ("train.max_steps", 3),
        ("train.batch_size", 4), ("output_dir", str(out)), ("tracking", [])]))
    assert metrics["validation"]["examples"] == 4 and 0.0 <= metrics["validation"]["accuracy"] <= 1.0
    assert json.loads((out / "config.json").read_text())["id2label"] == {"0": "not_equivalent", "1": "equivalent"}
    classify = pipeline("text-classification", model=str(out))
    result = classify({"text": "he bought a new car", "text_pair": "he purchased a new automobile"})
    assert result["label"] in {"not_equivalent", "equivalent"}
