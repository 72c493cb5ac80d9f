"""Issue 15, task data: NER tag schemes and CoNLL columns, byte-level BPE words, causal-LM text and pairs, QA
input formats and `data inspect`, seq2seq predict inputs and reference columns. Every bad input is one
AdaptError naming the file and line; every conversion is exact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datasets import Dataset

from adapt import assets
from adapt.errors import AdaptError
from adapt.recipe import resolve_recipe
from adapt.tasks import get_task


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPT_CACHE", str(tmp_path / "cache"))


def make_task(recipe: str, *overrides, tokenizer: str | None = "embedded:minilm"):
    task = get_task(resolve_recipe(recipe, [("data.test", None), *overrides]))
    if tokenizer:
        task.load_tokenizer(assets.resolve_model_path(tokenizer))
    return task


# ---- NER: tag schemes -----------------------------------------------------------------------------------
def conll(path: Path, rows: list[str]) -> str:
    """A CoNLL file from `WORD ... TAG` lines ('' = sentence break)."""
    path.write_text("\n".join(rows) + "\n")
    return str(path)


IOB1_ROWS = ["-DOCSTART- -X- -X- O", "", "John NNP I-NP I-PER", "Smith NNP I-NP I-PER", "met VBD I-VP O",
             "Mary NNP I-NP I-PER", "Jane NNP I-NP B-PER", "in IN I-PP O", "New NNP I-NP I-LOC",
             "York NNP I-NP I-LOC", "", "Bonn NNP I-NP I-LOC"]
IOB1_AS_IOB2 = [["B-PER", "I-PER", "O", "B-PER", "B-PER", "O", "B-LOC", "I-LOC"], ["B-LOC"]]


def test_iob1_conll_reads_as_iob2_with_a_note(tmp_path, capsys):
    path = conll(tmp_path / "iob1.txt", IOB1_ROWS)
    ds = make_task("ner", ("data.train", path)).read_source(path, "train")
    assert ds["tokens"][1] == ["Bonn"]
    assert ds["tags"] == IOB1_AS_IOB2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"note: {path}: tags are in the IOB1 scheme; converted to IOB2 on reading" in err


@pytest.mark.parametrize("scheme, tags", [
    ("BIOES", ["B-PER", "E-PER", "O", "S-LOC", "B-ORG", "I-ORG", "E-ORG", "S-PER", "S-PER"]),
    ("BILOU", ["B-PER", "L-PER", "O", "U-LOC", "B-ORG", "I-ORG", "L-ORG", "U-PER", "U-PER"]),
    ("IOE", ["I-PER", "E-PER", "O", "E-LOC", "I-ORG", "I-ORG", "E-ORG", "E-PER", "E-PER"]),
])
def test_bioes_bilou_ioe_jsonl_read_as_iob2(tmp_path, capsys, scheme, tags):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"tokens": list("abcdefghi"), "ner_tags": tags}) + "\n")
    ds = make_task("ner", ("data.train", str(path))).read_source(str(path), "train")
    assert ds["tags"] == [["B-PER", "I-PER", "O", "B-LOC", "B-ORG", "I-ORG", "I-ORG", "B-PER", "B-PER"]]
    assert f"tags are in the {scheme} scheme; converted to IOB2" in capsys.readouterr().err


def test_iob2_file_is_read_unchanged_without_a_note(tmp_path, capsys):
    path = conll(tmp_path / "iob2.txt", ["Anna B-PER", "Lee I-PER", "left O", "", "Oslo B-LOC"])
    ds = make_task("ner", ("data.train", path)).read_source(path, "train")
    assert ds["tags"] == [["B-PER", "I-PER", "O"], ["B-LOC"]]
    assert capsys.readouterr().err == ""


def test_unknown_tag_shape_names_file_and_line(tmp_path):
    path = conll(tmp_path / "io.txt", ["Anna B-PER", "Lee I-PER", "", "Oslo LOC"])
    with pytest.raises(AdaptError, match=r"io\.txt: line 4: tag 'LOC' has no known shape; use O, or PREFIX-TYPE"):
        make_task("ner", ("data.train", path)).read_source(path, "train")


def test_mixed_schemes_name_both_lines(tmp_path):
    path = conll(tmp_path / "mixed.txt", ["Anna S-PER", "", "New B-LOC", "York L-LOC"])
    with pytest.raises(AdaptError, match=r"'S-PER' \(.*mixed\.txt: line 1\) is BIOES/IOE and 'L-LOC' "
                                         r"\(.*mixed\.txt: line 4\) is BILOU"):
        make_task("ner", ("data.train", path)).read_source(path, "train")


def test_three_of_four_columns_is_an_error_naming_the_line(tmp_path):
    path = conll(tmp_path / "ragged.txt", ["-DOCSTART- -X- -X- O", "", "EU NNP B-NP B-ORG", "rejects VBZ B-VP O",
                                           "", "German JJ B-NP", "call NN I-NP O"])
    with pytest.raises(AdaptError, match=r"ragged\.txt: line 6 has 3 columns but line 3 has 4; the entity tag is "
                                         r"the last column"):
        make_task("ner", ("data.train", path)).read_source(path, "train")


def test_null_and_empty_words_and_sentences_are_errors(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"tokens": ["a", None], "ner_tags": ["O", "O"]}) + "\n")
    with pytest.raises(AdaptError, match=r"bad\.jsonl: (example|line) 1, word 2: the word is empty"):
        make_task("ner", ("data.train", str(path))).read_source(str(path), "train")
    rows = [{"tokens": ["a"], "ner_tags": ["O"]}, {"tokens": ["b"], "ner_tags": [None]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(AdaptError, match=r"bad\.jsonl: (example|line) 2, word 1: tag 'None' has no known shape"):
        make_task("ner", ("data.train", str(path))).read_source(str(path), "train")
    path.write_text(json.dumps({"tokens": [], "ner_tags": []}) + "\n")
    with pytest.raises(AdaptError, match=r"bad\.jsonl: (example|line) 1 has no words"):
        make_task("ner", ("data.train", str(path))).read_source(str(path), "train")


def test_tag_decoding_of_every_scheme():
    from adapt.metrics.sequence import tag_spans, to_iob2

    assert tag_spans(["I-PER", "I-PER", "B-PER", "I-LOC", "O", "I-LOC"]) == [
        ("PER", 0, 2), ("PER", 2, 3), ("LOC", 3, 4), ("LOC", 5, 6)]
    assert tag_spans(["S-PER", "I-PER", "E-PER", "E-PER"]) == [("PER", 0, 1), ("PER", 1, 3), ("PER", 3, 4)]
    assert to_iob2(["U-X", "B-X", "L-X", "O", "I-Y"]) == ["B-X", "B-X", "I-X", "O", "B-Y"]


def test_predicted_entities_starting_with_inside_are_scored_as_returned(tmp_path):
    """Predictions in IOB1 shape (an entity starts with I-): `postprocess` returns IOB2 tags and entities, and
    the task's own score counts exactly those entities: identical entities give F1 1.0."""
    path = conll(tmp_path / "iob1.txt", IOB1_ROWS)
    task = make_task("ner", ("data.train", path), ("data.validation", path))
    raw = task.load_splits()["validation"]
    assert raw["tags"] == IOB1_AS_IOB2
    ids = {name: i for i, name in enumerate(task.label_names)}
    predicted = [["I-PER", "I-PER", "O", "I-PER", "B-PER", "O", "I-LOC", "I-LOC"], ["I-LOC"]]
    assert all(tag in ids for tags in predicted for tag in tags)
    outputs = [{"pred": [ids[t] for t in tags]} for tags in predicted]
    features = Dataset.from_dict({"word_starts": [list(range(len(t))) for t in predicted]})
    predictions = task.postprocess(outputs, features, raw)
    assert [p["tags"] for p in predictions] == IOB1_AS_IOB2
    assert [(e["type"], e["text"]) for e in predictions[0]["entities"]] == [
        ("PER", "John Smith"), ("PER", "Mary"), ("PER", "Jane"), ("LOC", "New York")]
    scores = task.score(predictions, raw)
    assert scores["f1"] == 1.0
    assert sum(t["support"] for t in scores["per_type"].values()) == 5


def byte_level_tokenizer(folder: Path, cls_name: str) -> str:
    """A tiny byte-level BPE (RoBERTa/GPT-2 style) trained on sentences where 'lives' only follows a space."""
    import transformers
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["she lives in paris", "he lives in rome"] * 20, vocab_size=300, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tokenizer = getattr(transformers, cls_name)(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>",
                                                pad_token="<pad>", unk_token="<unk>")
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("cls_name", ["RobertaTokenizerFast", "GPT2TokenizerFast", "PreTrainedTokenizerFast"])
def test_byte_level_bpe_words_keep_their_leading_space(tmp_path, cls_name):
    folder = byte_level_tokenizer(tmp_path / "tok", cls_name)
    path = conll(tmp_path / "train.txt", ["she O", "lives O", "in O", "paris B-LOC"])
    task = make_task("ner", ("data.train", path), ("data.validation", path), tokenizer=None)
    tokenizer = task.load_tokenizer(folder)
    features = task.featurize(task.load_splits()["train"], "train")
    pieces = tokenizer.convert_ids_to_tokens(features[0]["input_ids"])
    assert "Ġlives" in pieces and "Ġparis" in pieces and "ives" not in pieces
    # the run folder's tokenizer reloads with the same setting (pipelines on the saved run agree)
    tokenizer.save_pretrained(tmp_path / "saved")
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(tmp_path / "saved")
    ids = again(["lives"], is_split_into_words=True)["input_ids"]
    assert ids == tokenizer(["lives"], is_split_into_words=True)["input_ids"]
    assert "Ġlives" in again.convert_ids_to_tokens(ids)


# ---- causal LM: plain text and prompt/completion pairs ------------------------------------------------------
def ptb_file(path: Path, lines: int) -> str:
    """A Penn Treebank style file: one sentence per line, no blank lines; every line is 50 characters."""
    path.write_text("".join(f"sentence {i:04d} " + "x" * 35 + " .\n" for i in range(lines)))
    return str(path)


def test_ptb_style_text_splits_at_line_ends(tmp_path):
    path = ptb_file(tmp_path / "ptb.train.txt", 300)  # 15,000 characters
    task = make_task("clm", ("data.train", path), ("data.validation", None), tokenizer=None)
    ds = task.read_source(path, "train")
    assert len(ds) == 8  # seven passages of 40 lines (2,000 characters) and one of 20 lines
    assert "".join(ds["text"]) == Path(path).read_text()
    assert ds["ends_document"] == [False] * 7 + [True]
    splits = task.load_splits()
    assert (len(splits["train"]), len(splits["validation"])) == (7, 1)
    one_per_line = make_task("clm", ("data.train", path), ("task_options.passage_chars", 1), tokenizer=None)
    assert len(one_per_line.read_source(path, "train")) == 300


def test_single_passage_text_says_why_it_cannot_be_split(tmp_path):
    path = tmp_path / "one.txt"
    path.write_text("a single long line of text without any line break " * 10)
    task = make_task("clm", ("data.train", str(path)), ("data.validation", None), tokenizer=None)
    with pytest.raises(AdaptError, match=r"one\.txt: the text \(500 characters\) is a single passage, and the "
                                         r"validation split is carved from whole passages.*lower "
                                         r"task_options.passage_chars or give --validation"):
        task.load_splits()
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(AdaptError, match=r"empty\.txt: the file has no text"):
        task.read_source(str(tmp_path / "empty.txt"), "validation")


@pytest.mark.parametrize("bad, what", [({"prompt": "Q3", "completion": None}, "'completion' is null"),
                                       ({"prompt": "", "completion": "A3"}, "'prompt' is empty"),
                                       ({"prompt": "Q3", "completion": "  "}, "'completion' is empty")])
def test_null_or_empty_prompt_or_completion_names_the_line(tmp_path, bad, what):
    path = tmp_path / "pairs.jsonl"
    rows = [{"prompt": "Q1", "completion": "A1"}, {"prompt": "Q2", "completion": "A2"}, bad]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = make_task("clm", ("data.train", str(path)), tokenizer=None)
    with pytest.raises(AdaptError, match=rf"pairs\.jsonl: line 3: {what}; every prompt/completion pair needs text"):
        task.read_source(str(path), "train")


def test_ragged_last_block_is_reported_and_perplexity_is_per_model_token(tmp_path, capsys):
    task = make_task("clm", ("data.train", "x.txt"), ("task_options.block_size", 5), tokenizer="embedded:smollm2")
    raw = Dataset.from_dict({"text": ["one two three four five six seven eight nine ten eleven"],
                             "ends_document": [True]})
    total = len(task.tokenizer(raw["text"][0], add_special_tokens=False)["input_ids"]) + 1  # + EOS
    features = task.featurize(raw, "validation")
    assert total == 12 and len(features) == 2
    assert f"note: the validation split's last 2 of 12 tokens fill no whole block" in capsys.readouterr().err
    predictions = task.postprocess([{"nll": 2.0, "tokens": 3}] * len(features), features, raw)
    scores = task.score(predictions, raw)
    assert scores["tokens_dropped"] == 2
    assert scores["tokens"] == 3 * len(features)
    assert scores["perplexity_unit"] == "model token"


# ---- question answering ---------------------------------------------------------------------------------
CONTEXT = "Alice flew to Paris on Monday."


def qa_rows(n: int = 4) -> list[dict]:
    return [{"id": f"q{i}", "question": f"Where did Alice fly {i}?", "context": CONTEXT,
             "answers": {"text": ["Paris"], "answer_start": [14]}} for i in range(n)]


def test_qa_csv_with_json_answers_and_mapped_columns(tmp_path):
    import csv

    path = tmp_path / "qa.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["qid", "query", "passage", "gold"])
        writer.writerow(["a", "Where?", CONTEXT, json.dumps({"text": ["Paris"], "answer_start": [14]})])
        writer.writerow(["b", "When?", CONTEXT, json.dumps([{"text": "Monday", "answer_start": 23}])])
    task = make_task("qa", ("data.train", str(path)), ("data.columns.question", "query"),
                     ("data.columns.context", "passage"), ("data.columns.answers", "gold"), tokenizer=None)
    ds = task.read_source(str(path), "train")
    assert ds["question"] == ["Where?", "When?"]
    assert ds["answers"] == [{"text": ["Paris"], "answer_start": [14]}, {"text": ["Monday"], "answer_start": [23]}]
    with path.open("a", newline="") as handle:
        csv.writer(handle).writerow(["c", "Who?", CONTEXT, "Alice"])
    with pytest.raises(AdaptError, match=r"qa\.csv: line 4, question id '2': answers 'Alice' are not JSON; give "):
        task.read_source(str(path), "train")


def test_qa_mapped_columns_also_read_squad_json(tmp_path):
    path = tmp_path / "squad.json"
    qas = [{"id": "x", "question": "Where?", "answers": [{"text": "Paris", "answer_start": 14}]}]
    path.write_text(json.dumps({"data": [{"title": "T", "paragraphs": [{"context": CONTEXT, "qas": qas}]}]}))
    task = make_task("qa", ("data.train", str(path)), ("data.columns.question", "query"), tokenizer=None)
    assert task.read_source(str(path), "train")["question"] == ["Where?"]


@pytest.mark.parametrize("change, message", [
    ({"question": None}, r"line 3, question id 'q2': 'question' is empty"),
    ({"answers": {"text": ["Paris"], "answer_start": [None]}}, r"line 3, question id 'q2': answer_start None is not "
                                                               r"a character offset"),
    ({"answers": {"text": [None], "answer_start": [14]}}, r"line 3, question id 'q2': an answer text is null"),
])
def test_qa_bad_rows_name_file_and_line(tmp_path, change, message):
    rows = qa_rows()
    rows[2].update(change)
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(AdaptError, match=r"qa\.jsonl: " + message):
        make_task("qa", ("data.train", str(path)), tokenizer=None).read_source(str(path), "train")


def test_qa_short_window_spans_do_not_overflow():
    """The n-best lists of a short window include padding positions at the float minimum; summing two of
    those overflowed (RuntimeWarning) before only valid pairs were summed."""
    import warnings

    import numpy as np

    from adapt.tasks.question_answering import window_spans

    low = float(np.finfo(np.float32).min)
    record = {"start_indices": np.array([1, 5, 6]), "end_indices": np.array([2, 6, 5]),
              "start_values": np.array([3.0, low, low], dtype=np.float32),
              "end_values": np.array([2.0, low, low], dtype=np.float32)}
    offsets = [None, [0, 5], [6, 10], None]  # positions 4.. are padding
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert window_spans(record, offsets, max_answer_length=30) == [(5.0, 0, 10)]


def test_qa_inspect_reports_windows_and_unanswerable_not_truncation(tmp_path):
    from adapt.inspect_data import inspect_recipe

    long_context = "The river flows north. " * 60 + CONTEXT
    rows = []
    for i in range(10):
        context = long_context if i % 2 else CONTEXT
        answers = ({"text": [], "answer_start": []} if i % 5 == 4 else
                   {"text": ["Paris"], "answer_start": [context.index("Paris")]})
        rows.append({"id": f"q{i}", "title": f"t{i}", "question": "Where?", "context": context, "answers": answers})
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = resolve_recipe("qa", [("data.train", str(path)), ("data.validation", str(path)), ("data.test", None),
                                   ("train.max_length", 128), ("task_options.doc_stride", 32),
                                   ("task_options.version_2_with_negative", True)])
    report, _ = inspect_recipe(recipe)
    entry = report["splits"]["validation"]
    assert entry["unanswerable"] == 2
    assert entry["windows"]["questions_with_several"] == 5 and entry["windows"]["max"] > 1
    assert "truncated" not in entry["tokens"]
    assert not any("truncated" in note for note in report["warnings"])


# ---- seq2seq ------------------------------------------------------------------------------------------------
def test_seq2seq_predict_reads_the_source_column_of_json_lines():
    task = make_task("summarize", tokenizer=None)
    inputs = task.inputs_from_texts([json.dumps({"source": ["First sentence.", "Second one."], "target": "t"}),
                                     "a plain line of text", "{not json, a brace"])
    assert inputs["source"] == ["First sentence. Second one.", "a plain line of text", "{not json, a brace"]
    with pytest.raises(AdaptError, match=r"input 1: the JSON object has no 'source' \(keys: text\); name the "
                                         r"source column with --set data.columns.text=KEY"):
        task.inputs_from_texts([json.dumps({"text": "x"})])


def test_ner_and_clm_predict_read_json_lines_too():
    ner = make_task("ner", tokenizer=None)
    assert ner.inputs_from_texts([json.dumps({"tokens": ["New", "York"], "ner_tags": ["B-LOC", "I-LOC"]}),
                                  "Alice met Bob"])["tokens"] == [["New", "York"], ["Alice", "met", "Bob"]]
    clm = make_task("clm-instruct", tokenizer=None)
    assert clm.inputs_from_texts([json.dumps({"prompt": "Say hi", "completion": "hi"}), "plain"])["prompt"] == [
        "Say hi", "plain"]


def test_seq2seq_several_reference_columns_score_together(tmp_path):
    path = tmp_path / "test.jsonl"
    rows = [{"src": "a b c", "ref1": "the cat sat on the mat", "ref2": "a cat was sitting on the mat"},
            {"src": "d e f", "ref1": "it rained all day long", "ref2": "rain fell the whole day"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = make_task("translate-encdec", ("data.columns.text", "src"), ("data.columns.target", "ref1"),
                     ("data.columns.references", ["ref2"]), tokenizer=None)
    raw = task.read_source(str(path), "test")
    assert raw["references"] == [[r["ref1"], r["ref2"]] for r in rows]
    predictions = [{"generated_text": r["ref2"], "generated_tokens": 6} for r in rows]
    assert task.score(predictions, raw)["bleu"] == pytest.approx(100.0)
    with pytest.raises(AdaptError, match=r"no column 'ref3'"):
        make_task("translate-encdec", ("data.columns.text", "src"), ("data.columns.target", "ref1"),
                  ("data.columns.references", ["ref3"]), tokenizer=None).read_source(str(path), "test")


def test_seq2seq_null_target_or_source_names_the_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"source": "x", "target": "y"}, {"source": "x", "target": None}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = make_task("summarize", tokenizer=None)
    with pytest.raises(AdaptError, match=r"pairs\.jsonl: line 2: 'target' is null or empty"):
        task.read_source(str(path), "train")
    path.write_text(json.dumps({"source": [], "target": "y"}) + "\n")
    with pytest.raises(AdaptError, match=r"pairs\.jsonl: line 1: 'source' is empty"):
        task.read_source(str(path), "train")


def test_integer_tags_named_in_bioes_become_iob2_labels(tmp_path, capsys):
    path = tmp_path / "ids.jsonl"
    path.write_text(json.dumps({"tokens": ["Ann", "in", "New", "York"], "ner_tags": [1, 0, 2, 3]}) + "\n")
    task = make_task("ner", ("data.train", str(path)), ("data.validation", str(path)),
                     ("data.label_names", ["O", "S-PER", "B-LOC", "E-LOC"]), tokenizer=None)
    splits = task.load_splits()
    assert splits["train"]["tags"] == [["B-PER", "O", "B-LOC", "I-LOC"]]
    assert task.label_names == ["O", "B-LOC", "B-PER", "I-LOC"]
    assert "tags are in the BIOES scheme; converted to IOB2" in capsys.readouterr().err
