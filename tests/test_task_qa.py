"""Tests of the extractive QA task: SQuAD reading, splits, windows, span search, v2 nulls, end to end, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from adapt.assets import resolve_model_path
from adapt.errors import AdaptError
from adapt.recipe import resolve_recipe
from adapt.tasks import get_task

NUMBERS = ("one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
           "sixteen seventeen eighteen nineteen twenty")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A 2-layer random BERT QA model with the MiniLM WordPiece tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertForQuestionAnswering

    folder = tmp_path_factory.mktemp("tiny-bert-qa")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("embedded:minilm"))
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertForQuestionAnswering(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPT_CACHE", str(tmp_path / "cache"))


def squad_document(n_articles: int = 6) -> dict:
    """Articles of number words; each question's answer is a pair of consecutive words."""
    words = NUMBERS.split()
    articles = []
    for a in range(n_articles):
        context = f"article {a} counts {NUMBERS} and stops ."
        qas = []
        for q, first in enumerate((2, 8, 14)):
            answer = f"{words[first]} {words[first + 1]}"
            qas.append({"id": f"a{a}q{q}", "question": f"which pair follows {words[first - 1]} ?",
                        "answers": [{"text": answer, "answer_start": context.index(answer)}]})
        articles.append({"title": f"Article {a}", "paragraphs": [{"context": context, "qas": qas}]})
    return {"version": "1.1", "data": articles}


def write_json(path, document) -> str:
    path.write_text(json.dumps(document))
    return str(path)


def make_task(model_dir, overrides=()):
    task = get_task(resolve_recipe("qa", [("model", str(model_dir)), *overrides]))
    task.load_tokenizer(str(model_dir))
    return task


# ---- reading --------------------------------------------------------------------------------------
def test_reads_squad_json_one_row_per_question(tiny_model, tmp_path):
    document = squad_document(2)
    document["data"][1]["paragraphs"][0]["qas"].append(
        {"id": "impossible", "question": "who?", "answers": [], "is_impossible": True,
         "plausible_answers": [{"text": "one", "answer_start": 0}]})
    ds = make_task(tiny_model).read_source(write_json(tmp_path / "squad.json", document), "train")
    assert ds.column_names == ["id", "title", "context", "question", "answers"]
    assert len(ds) == 7
    first = ds[0]
    assert first["id"] == "a0q0" and first["title"] == "Article 0"
    assert first["answers"] == {"text": ["three four"], "answer_start": [first["context"].index("three four")]}
    assert ds[-1]["answers"] == {"text": [], "answer_start": []}


def test_reads_hub_layout_jsonl_and_groups_by_passage_without_titles(tiny_model, tmp_path):
    context = f"list: {NUMBERS}"
    rows = [{"id": str(i), "question": "which?", "context": context,
             "answers": {"text": ["five"], "answer_start": [context.index("five")]}} for i in range(3)]
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = make_task(tiny_model).read_source(str(path), "train")
    assert ds["id"] == ["0", "1", "2"]
    assert ds["title"] == [context] * 3


def test_validation_holds_out_whole_articles(tiny_model, tmp_path):
    path = write_json(tmp_path / "squad.json", squad_document(10))
    task = make_task(tiny_model, [("data.train", path), ("data.validation_fraction", 0.2)])
    splits = task.load_splits()
    train_titles, validation_titles = set(splits["train"]["title"]), set(splits["validation"]["title"])
    assert len(validation_titles) == 2 and len(train_titles) == 8
    assert not train_titles & validation_titles
    assert len(splits["train"]) + len(splits["validation"]) == 30


# ---- windows --------------------------------------------------------------------------------------
def window_task(model_dir):
    # [CLS] what color [SEP] + 12 context tokens + [SEP]; the second window starts 4 tokens before the
    # end of the first, at context word 9 ("nine"), and holds the last 12 words
    return make_task(model_dir, [("train.max_length", 17), ("task_options.doc_stride", 4)])


def one_question(answer: str):
    from datasets import Dataset

    return Dataset.from_dict({"id": ["q"], "title": ["t"], "context": [NUMBERS], "question": ["what color"],
                              "answers": [{"text": [answer], "answer_start": [NUMBERS.index(answer)]}]})


def test_training_windows_point_at_the_answer_or_cls(tiny_model):
    task = window_task(tiny_model)
    features = task.featurize(one_question("fifteen sixteen"), "train")
    assert len(features) == 2
    tokens = [task.tokenizer.convert_ids_to_tokens(ids) for ids in features["input_ids"]]
    assert tokens[0][4:16] == NUMBERS.split()[:12] and tokens[1][4:16] == NUMBERS.split()[8:]
    # not wholly inside window 1 -> [CLS]; window 2: context word 14 is at 4 + (14 - 8) = 10
    assert (features[0]["start_positions"], features[0]["end_positions"]) == (0, 0)
    assert (features[1]["start_positions"], features[1]["end_positions"]) == (10, 11)
    assert features["length"] == [17, 17]

    overlap = task.featurize(one_question("nine ten"), "train")  # in both windows
    assert [(f["start_positions"], f["end_positions"]) for f in overlap] == [(12, 13), (4, 5)]


def test_evaluation_windows_keep_example_and_context_offsets(tiny_model):
    task = window_task(tiny_model)
    features = task.featurize(one_question("nine ten"), "validation")
    assert features["example_index"] == [0, 0]
    offsets = features[1]["offset_mapping"]
    assert offsets[:4] == [None, None, None, None] and offsets[-1] is None
    start, end = offsets[4]
    assert NUMBERS[start:end] == "nine"
    batch = task.collate(features[:2])
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask"}


# ---- n-best span search ---------------------------------------------------------------------------
def record(starts: dict[int, float], ends: dict[int, float], null: float = -5.0) -> dict:
    """A hand-made eval_step output of one window: given top start/end logits by token position."""
    return {"start_indices": np.array(list(starts)), "start_values": np.array(list(starts.values())),
            "end_indices": np.array(list(ends)), "end_values": np.array(list(ends.values())), "null_score": null}


def test_best_span_is_taken_from_the_window_that_scores_it_highest(tiny_model):
    task = window_task(tiny_model)
    raw = one_question("nine ten")
    features = task.featurize(raw, "validation")
    outputs = [
        # window 1: "nine ten" (tokens 12-13) scores 4; question tokens (1) and end-before-start pairs
        # score higher but are not answers
        record({1: 50.0, 12: 2.0, 13: 1.0}, {13: 2.0, 1: 50.0, 5: 30.0}),
        # window 2: "fifteen sixteen" (tokens 10-11) scores 9, a span past max_answer_length scores 20
        record({10: 4.0, 4: 10.0}, {11: 5.0, 15: 10.0}),
    ]
    [prediction] = make_task(tiny_model, [("train.max_length", 17), ("task_options.doc_stride", 4),
                                          ("task_options.max_answer_length", 3)]).postprocess(outputs, features, raw)
    assert prediction["answer"] == "fifteen sixteen"
    assert NUMBERS[prediction["start"]:prediction["end"]] == "fifteen sixteen"
    assert 0 < prediction["score"] <= 1

    outputs[1] = record({4: 3.0}, {5: 3.0})  # "nine ten" again, now as window 2's tokens 4-5, scoring 6
    [prediction] = task.postprocess(outputs, features, raw)
    assert (prediction["answer"], prediction["start"]) == ("nine ten", NUMBERS.index("nine ten"))


def test_v2_null_answer_follows_the_threshold(tiny_model):
    overrides = [("train.max_length", 17), ("task_options.doc_stride", 4),
                 ("task_options.version_2_with_negative", True)]
    task = make_task(tiny_model, overrides)
    raw = one_question("nine ten")
    features = task.featurize(raw, "validation")
    outputs = [record({12: 2.0}, {13: 2.0}, null=7.0), record({4: 1.0}, {5: 1.0}, null=9.0)]
    [prediction] = task.postprocess(outputs, features, raw)  # min null 7 - best span 4 = 3 > 0
    assert prediction["answer"] == "" and prediction["start"] is None
    assert task.score([prediction], raw)["f1"] == 0.0

    lenient = make_task(tiny_model, [*overrides, ("task_options.null_score_diff_threshold", 3.5)])
    [prediction] = lenient.postprocess(outputs, features, raw)
    assert prediction["answer"] == "nine ten"
    assert lenient.score([prediction], raw)["f1"] == 100.0


# ---- end to end -----------------------------------------------------------------------------------
def test_finetune_writes_a_standard_hf_qa_folder(tiny_model, tmp_path):
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer, pipeline
    from transformers.pipelines import SUPPORTED_TASKS

    from adapt.runner import load_trained, predict_stream
    from adapt.train import finetune

    out = tmp_path / "run"
    metrics = finetune(resolve_recipe("qa", [
        ("model", str(tiny_model)), ("data.train", write_json(tmp_path / "squad.json", squad_document(6))),
        ("train.max_steps", 3), ("train.batch_size", 4), ("train.max_length", 48),
        ("task_options.doc_stride", 16), ("output_dir", str(out)), ("tracking", []),
    ]))
    validation = metrics["validation"]
    assert set(validation) >= {"exact_match", "f1"} and validation["examples"] == 3
    assert 0 <= validation["f1"] <= 100
    rows = [json.loads(line) for line in (out / "predictions_validation.jsonl").read_text().splitlines()]
    assert {"id", "question", "answers", "prediction_text", "score", "start", "end"} <= set(rows[0])

    context = f"list: {NUMBERS}"
    # a plain Hugging Face checkpoint: the Auto classes load it without adapt
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForQuestionAnswering.from_pretrained(out, use_safetensors=True)
    assert model(**tokenizer("which follows two?", context, return_tensors="pt")).start_logits.ndim == 2
    # transformers 5 removed the question-answering pipeline; older versions load the folder with it
    if "question-answering" in SUPPORTED_TASKS:
        answer = pipeline("question-answering", model=str(out))(question="which follows two?", context=context)
        assert set(answer) >= {"answer", "score", "start", "end"}

    task, model = load_trained(str(out))
    line = json.dumps({"question": "which follows two?", "context": context})
    [result] = predict_stream(task, model, [line])
    assert result["answer"] == context[result["start"]:result["end"]]
    with pytest.raises(AdaptError, match="input 1: give a JSON object"):
        list(predict_stream(task, model, ["which follows two?"]))


# ---- bad input ------------------------------------------------------------------------------------
def test_malformed_squad_json_names_the_file_and_entry(tiny_model, tmp_path):
    document = squad_document(2)
    del document["data"][1]["paragraphs"][0]["context"]
    path = write_json(tmp_path / "broken.json", document)
    with pytest.raises(AdaptError, match=r"broken.json: data\[1\]\.paragraphs\[0\]: 'context' is missing"):
        make_task(tiny_model).read_source(path, "train")

    (tmp_path / "syntax.json").write_text('{"data": [\n{"title": "x",,}]}')
    with pytest.raises(AdaptError, match="syntax.json: line 2 is not valid JSON"):
        make_task(tiny_model).read_source(str(tmp_path / "syntax.json"), "train")


def test_answer_start_that_does_not_match_the_text_is_an_error(tiny_model, tmp_path):
    document = squad_document(1)
    document["data"][0]["paragraphs"][0]["qas"][1]["answers"][0]["answer_start"] += 1
    with pytest.raises(AdaptError, match="question id 'a0q1': answer 'nine ten' is not at answer_start"):
        make_task(tiny_model).read_source(write_json(tmp_path / "squad.json", document), "train")


def test_unanswerable_questions_need_version_2(tiny_model, tmp_path):
    document = squad_document(4)
    for article in document["data"]:
        article["paragraphs"][0]["qas"][0]["answers"] = []
    path = write_json(tmp_path / "squad.json", document)
    with pytest.raises(AdaptError, match="version_2_with_negative=true"):
        make_task(tiny_model, [("data.train", path)]).load_splits()
    splits = make_task(tiny_model, [("data.train", path), ("task_options.version_2_with_negative", True)]).load_splits()
    assert len(splits["train"]) + len(splits["validation"]) == 12
