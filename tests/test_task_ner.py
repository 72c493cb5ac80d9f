"""Token classification (`ner`): CoNLL/JSON reading, sub-word label alignment, word-level scoring, bad
input, and a tiny end-to-end run loaded back by `pipeline` and `adapt predict`."""

import json
from pathlib import Path

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, Features, List, Value

from adapt import assets
from adapt.errors import AdaptError
from adapt.recipe import resolve_recipe
from adapt.tasks import get_task

CONLL = """-DOCSTART- -X- -X- O

Arnold NNP B-NP B-PER
Schwarzenegger NNP I-NP I-PER
visited VBD B-VP O
Wolfsburg NNP B-NP B-LOC
. . O O


-DOCSTART- -X- -X- O

Alice NNP B-NP B-PER
met VBD B-VP O
Bob NNP B-NP B-PER
"""
# sentences the tiny model can learn in a few dozen steps: a fixed name list and place list
NAMES, PLACES = ["Alice", "Bob", "Carol"], ["Paris", "Berlin", "Rome"]


def tiny_bert(folder: Path) -> str:
    """A 2-layer random BERT with the MiniLM WordPiece tokenizer, saved as a local checkpoint."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(assets.resolve_model_path("embedded:minilm"))
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPT_CACHE", str(tmp_path / "cache"))


def ner_task(tmp_path, *overrides):
    """A `ner` task on a small CoNLL file, with its tokenizer loaded."""
    train = tmp_path / "train.txt"
    if not train.exists():
        train.write_text(CONLL)
    recipe = resolve_recipe("ner", [("data.train", str(train)), ("data.validation", str(train)),
                                    ("data.test", None), *overrides])
    task = get_task(recipe)
    task.load_tokenizer(assets.resolve_model_path("embedded:minilm"))
    return task


def conll_file(path: Path, sentences: list[list[tuple[str, str]]]) -> str:
    path.write_text("\n\n".join("\n".join(f"{w} X X {t}" for w, t in s) for s in sentences) + "\n")
    return str(path)


def test_conll_reading_skips_docstart_and_blank_lines(tmp_path):
    task = ner_task(tmp_path)
    splits = task.load_splits()
    train = splits["train"]
    assert train["tokens"] == [["Arnold", "Schwarzenegger", "visited", "Wolfsburg", "."], ["Alice", "met", "Bob"]]
    assert train["tags"] == [["B-PER", "I-PER", "O", "B-LOC", "O"], ["B-PER", "O", "B-PER"]]
    assert task.label_names == ["O", "B-LOC", "B-PER", "I-PER"]


def test_labels_sit_on_the_first_sub_token_only(tmp_path):
    task = ner_task(tmp_path)
    features = task.featurize(task.load_splits()["train"].select([0]), "train")[0]
    pieces = task.tokenizer.convert_ids_to_tokens(features["input_ids"])
    assert pieces == ["[CLS]", "arnold", "schwarz", "##ene", "##gger", "visited", "wolf", "##sburg", ".", "[SEP]"]
    ids = {name: i for i, name in enumerate(task.label_names)}
    assert features["labels"] == [-100, ids["B-PER"], ids["I-PER"], -100, -100, ids["O"], ids["B-LOC"], -100,
                                  ids["O"], -100]
    assert features["word_starts"] == [1, 2, 5, 6, 8]
    assert features["length"] == 10


def test_entity_split_across_sub_words_scores_at_word_level(tmp_path):
    task = ner_task(tmp_path)
    raw = task.load_splits()["train"]
    features = task.featurize(raw, "eval")
    ids = {name: i for i, name in enumerate(task.label_names)}
    # sentence 1: the continuation pieces of "Schwarzenegger" and "Wolfsburg" predict junk that must be ignored;
    # Wolfsburg's first piece says B-PER. Sentence 2: both names right.
    first = np.array([-100, ids["B-PER"], ids["I-PER"], ids["O"], ids["B-LOC"], ids["O"], ids["B-PER"],
                      ids["B-LOC"], ids["O"], -100])
    second = np.array([-100, ids["B-PER"], ids["O"], ids["B-PER"], -100])
    predictions = task.postprocess([{"index": 0, "pred": first}, {"index": 1, "pred": second}], features, raw)
    assert predictions[0]["tags"] == ["B-PER", "I-PER", "O", "B-PER", "O"]
    assert predictions[0]["entities"] == [{"type": "PER", "start": 0, "end": 2, "text": "Arnold Schwarzenegger"},
                                          {"type": "PER", "start": 3, "end": 4, "text": "Wolfsburg"}]
    scores = task.score(predictions, raw)
    # gold: PER(Arnold Schwarzenegger), LOC(Wolfsburg), PER(Alice), PER(Bob); predicted: 3 right PER + 1 wrong PER
    assert scores["precision"] == pytest.approx(3 / 4)
    assert scores["recall"] == pytest.approx(3 / 4)
    assert scores["f1"] == pytest.approx(3 / 4)
    assert scores["accuracy"] == pytest.approx(7 / 8)
    assert scores["per_type"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert scores["per_type"]["PER"]["precision"] == pytest.approx(3 / 4)
    assert scores["per_type"]["PER"]["recall"] == 1.0
    assert scores["truncated_words"] == 0


def test_words_cut_by_truncation_are_tagged_o_and_counted(tmp_path):
    task = ner_task(tmp_path, ("train.max_length", 8))
    raw = task.load_splits()["train"].select([0])
    features = task.featurize(raw, "eval")
    assert features[0]["word_starts"] == [1, 2, 5, 6, -1]  # "." fell past [SEP] at position 7
    outputs = [{"index": 0, "pred": np.array([-100, 2, 3, 3, 3, 0, 1, 1])}]
    prediction = task.postprocess(outputs, features, raw)[0]
    assert prediction["tags"] == ["B-PER", "I-PER", "O", "B-LOC", "O"] and prediction["truncated_words"] == 1


def test_json_and_jsonl_inputs_with_names_or_ids(tmp_path):
    rows = [{"words": ["Alice", "visited", "Paris"], "labels": ["B-PER", "O", "B-LOC"]},
            {"words": ["Bob", "stayed"], "labels": ["B-PER", "O"]}]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "b.json").write_text(json.dumps([{"words": "Rome is far", "labels": [2, 0, 0]}]))
    task = ner_task(tmp_path, ("data.columns.text", "words"), ("data.columns.label", "labels"),
                    ("data.label_names", ["O", "B-PER", "B-LOC"]))
    jsonl = task.read_source(str(tmp_path / "a.jsonl"), "train")
    assert jsonl["tokens"] == [["Alice", "visited", "Paris"], ["Bob", "stayed"]]
    assert jsonl["tags"] == [["B-PER", "O", "B-LOC"], ["B-PER", "O"]]
    whitespace_and_ids = task.read_source(str(tmp_path / "b.json"), "train")
    assert whitespace_and_ids["tokens"] == [["Rome", "is", "far"]] and whitespace_and_ids["tags"] == [["B-LOC", "O", "O"]]


def test_hub_class_label_tags_are_named():
    recipe = resolve_recipe("ner", [])
    task = get_task(recipe)
    features = Features({"tokens": List(Value("string")),
                         "ner_tags": List(ClassLabel(names=["O", "B-PER", "I-PER"]))})
    ds = Dataset.from_dict({"tokens": [["Ada", "Lovelace"]], "ner_tags": [[1, 2]]}, features=features)
    assert task.normalize(ds, "conll2003")["tags"] == [["B-PER", "I-PER"]]


def test_bad_input_names_the_file_and_line(tmp_path):
    valid = conll_file(tmp_path / "valid.txt", [[("Acme", "B-ORG")]])
    task = ner_task(tmp_path, ("data.validation", valid))
    with pytest.raises(AdaptError, match=r"valid\.txt: tag 'B-ORG' in the validation split never appears in train"):
        task.load_splits()

    (tmp_path / "broken.txt").write_text("Alice B-PER\nmet O\nBob\n")
    with pytest.raises(AdaptError, match=r"broken\.txt: line 3 has no tag column"):
        task.read_source(str(tmp_path / "broken.txt"), "train")

    (tmp_path / "iob.txt").write_text("Alice PER\n")
    with pytest.raises(AdaptError, match=r"iob\.txt: line 1: tag 'PER' has no known shape; use O, or PREFIX-TYPE"):
        task.read_source(str(tmp_path / "iob.txt"), "train")

    (tmp_path / "short.jsonl").write_text(json.dumps({"tokens": ["a", "b"], "ner_tags": ["O"]}) + "\n")
    with pytest.raises(AdaptError, match=r"short\.jsonl: (example|line) 1 has 2 words but 1 tags"):
        task.read_source(str(tmp_path / "short.jsonl"), "train")


def test_finetune_then_pipeline_and_predict(tmp_path, tiny_model):
    from transformers import pipeline
    from typer.testing import CliRunner

    from adapt.cli import app
    from adapt.train import finetune

    sentences = [[(n, "B-PER"), ("visited", "O"), (p, "B-LOC")] for n in NAMES for p in PLACES]
    train = conll_file(tmp_path / "train.txt", sentences * 4)
    valid = conll_file(tmp_path / "valid.txt", sentences)
    out = tmp_path / "run"
    metrics = finetune(resolve_recipe("ner", [
        ("model", tiny_model), ("data.train", train), ("data.validation", valid), ("data.test", valid),
        ("train.max_steps", 40), ("train.batch_size", 8), ("train.lr", 5e-3), ("train.warmup_ratio", 0.0),
        ("output_dir", str(out)), ("tracking", [])]))
    assert metrics["validation"]["f1"] == 1.0 and metrics["test"]["f1"] == 1.0
    assert set(metrics["validation"]["per_type"]) == {"PER", "LOC"}

    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "O", "1": "B-LOC", "2": "B-PER"}
    assert config["label2id"] == {"O": 0, "B-LOC": 1, "B-PER": 2}
    groups = pipeline("token-classification", model=str(out), aggregation_strategy="simple")("Carol visited Rome")
    assert [(g["entity_group"], g["word"]) for g in groups] == [("PER", "carol"), ("LOC", "rome")]

    result = CliRunner().invoke(app, ["predict", "--model", str(out), "Bob visited Paris", "Alice visited  Berlin"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["tags"] for line in lines] == [["B-PER", "O", "B-LOC"]] * 2
    assert lines[1]["entities"][1] == {"type": "LOC", "start": 2, "end": 3, "text": "Berlin"}


@pytest.mark.integration
def test_embedded_minilm_on_conll2003_smoke(tmp_path):
    if not Path("../shared/data/conll2003/train.txt").exists():
        pytest.skip("CoNLL-2003 benchmark data is not present")
    from adapt.train import finetune

    metrics = finetune(resolve_recipe("ner", [
        ("train.max_steps", 2), ("data.max_train_examples", 64), ("data.max_eval_examples", 32),
        ("output_dir", str(tmp_path / "run")), ("tracking", [])]))
    assert metrics["test"]["examples"] == 32 and 0.0 <= metrics["test"]["f1"] <= 1.0
