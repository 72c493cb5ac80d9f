"""Extractive question answering (SQuAD v1.1/v2.0): answer spans found in sliding windows over the context.

Input formats (train, validation and test files alike):

- SQuAD JSON: `{"data": [{"title": ..., "paragraphs": [{"context": ..., "qas": [{"id": ..., "question": ...,
  "answers": [{"text": ..., "answer_start": N}], "is_impossible": false}]}]}]}` (v2.0 adds `is_impossible`);
- flat JSON Lines / JSON list / CSV / Parquet, one question per row, in the Hub `squad` layout: `question`,
  `context`, `answers` = `{"text": [...], "answer_start": [...]}` or a list of `{"text", "answer_start"}`
  objects (in CSV, a JSON string of either), optional `id` and `title` (questions of one title, or else of
  one context, stay on one side of a carved validation split). `answer_start` is the answer's character
  offset in the context. Unanswerable questions (task_options.version_2_with_negative) have empty lists.
- Other column names map with `data.columns.question=...`, `data.columns.context=...`,
  `data.columns.answers=...`.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset
from pydantic import Field

from adapt import data
from adapt.errors import AdaptError
from adapt.metrics import squad_scores, squad_v2_scores
from adapt.tasks.base import Task, TaskOptions, model_inputs, pad_batch

CLS_INDEX = 0  # where a window points when it holds no answer (BERT/RoBERTa put [CLS]/<s> first)
RAW_COLUMNS = ["id", "title", "context", "question", "answers"]
SQUAD_ENTRY = "_entry"  # rows flattened from SQuAD JSON: where the question sits (data[0].paragraphs[1].qas[2])


class QuestionAnsweringOptions(TaskOptions):
    doc_stride: int = Field(128, ge=1, description="tokens shared by consecutive context windows")
    max_question_length: int = Field(64, ge=1, description="question tokens kept (longer questions are cut)")
    n_best: int = Field(20, ge=1, description="start and end candidates per window")
    max_answer_length: int = Field(30, ge=1, description="longest answer span, in tokens")
    version_2_with_negative: bool = Field(False, description="questions may have no answer (SQuAD v2.0)")
    null_score_diff_threshold: float = Field(
        0.0, description="answer '' when the null score exceeds the best span score by more than this")


class QuestionAnswering(Task):
    name = "qa"
    Options = QuestionAnsweringOptions
    default_metric = "f1"
    metric_names = ("exact_match", "f1")  # SQuAD v1.1; v2 (version_2_with_negative) reports exact, f1, total
    pipeline_tag = "question-answering"
    auto_class = "AutoModelForQuestionAnswering"
    peft_task_type = "QUESTION_ANS"
    # a held-out split keeps whole articles: questions on one article share context and answers
    group_column = "title"

    def __init__(self, recipe):
        super().__init__(recipe)
        if self.options.version_2_with_negative:  # the official SQuAD v2.0 script's names
            self.metric_names = ("exact", "f1", "total")

    # ---- data -----------------------------------------------------------------------------------
    def read_file(self, path: Path) -> Dataset:
        """SQuAD JSON ({"data": [articles]}) is flattened to one row per question; any other table
        (JSON Lines, CSV, Parquet in the Hub layout) is read as it is (see the module docstring)."""
        if data.split_suffix(Path(path))[0] == ".json":
            text = data.read_text(path)
            try:
                document = json.loads(text)
            except json.JSONDecodeError as err:
                if err.msg != "Extra data":  # JSON Lines under a .json name is read as a table below
                    raise AdaptError(f"{path}: line {err.lineno} is not valid JSON ({err.msg})") from None
                document = None
            articles = document.get("data") if isinstance(document, dict) else None
            if is_squad_articles(articles):
                cols = self.recipe.data.columns
                rows = flatten_squad(articles, path)
                # SQuAD's own keys, under the names data.columns maps (so one mapping serves every file)
                names = {"question": cols.question, "context": cols.context, "answers": cols.answers}
                return Dataset.from_list([{names.get(k, k): v for k, v in row.items()} for row in rows])
        return Task.read_file(self, path)  # a table, read with data.delimiter / data.header_names

    def normalize(self, ds: Dataset, source: str) -> Dataset:
        """Canonical columns id/title/context/question/answers (answers as {"text": [...], "answer_start":
        [...]}); data.columns.question/context/answers name the raw columns. Each bad row is an error naming
        the file and its line (or its SQuAD entry)."""
        cols = self.recipe.data.columns
        data.require_columns(ds, [cols.question, cols.context, cols.answers], source)
        rows = ds.to_list()
        ids = [str(row["id"]) if row.get("id") is not None else str(number) for number, row in enumerate(rows)]
        repeated = [qid for qid, count in Counter(ids).items() if count > 1]
        if repeated:
            raise AdaptError(f"{source}: question id '{repeated[0]}' occurs more than once; ids must be unique")
        columns: dict[str, list] = {name: [] for name in RAW_COLUMNS}
        for number, (qid, row) in enumerate(zip(ids, rows)):
            where = f"{source}: {row[SQUAD_ENTRY] if row.get(SQUAD_ENTRY) else data.row_location(source, number)}"
            where += f", question id '{qid}'"
            context, question = row[cols.context], row[cols.question]
            if not isinstance(context, str) or not context.strip():
                raise AdaptError(f"{where}: '{cols.context}' is empty; every question needs a context")
            if not isinstance(question, str) or not question.strip():
                raise AdaptError(f"{where}: '{cols.question}' is empty; every row needs a question")
            answers = answers_dict(row[cols.answers], where)
            check_answer_offsets(context, answers, where)
            columns["id"].append(qid)
            # without titles, the passage itself groups questions, so one passage never lands in both splits
            columns["title"].append(str(row.get("title") or context))
            columns["context"].append(context)
            columns["question"].append(question)
            columns["answers"].append(answers)
        return Dataset.from_dict(columns)

    def setup(self, splits: dict[str, Dataset]) -> None:
        source = self.recipe.data.train
        if len(splits["train"]) == 0:
            raise AdaptError(f"{source}: holding out whole articles left no training questions (too few distinct "
                             "titles); give a --validation file or add articles")
        if self.options.version_2_with_negative:
            return
        for split_name, ds in splits.items():
            for qid, answers in zip(ds["id"][:], ds["answers"][:]):
                if not answers["text"]:
                    raise AdaptError(
                        f"{getattr(self.recipe.data, split_name, None) or source}: question id '{qid}' has no answer; "
                        "set task_options.version_2_with_negative=true for data with unanswerable questions"
                    )

    def inputs_from_texts(self, texts: list[str]) -> Dataset:
        """Each input is a JSON object {"question": ..., "context": ...} (keys as data.columns.question/context
        name them; a line of the task's JSON Lines data, answers and all, is one)."""
        cols = self.recipe.data.columns
        columns: dict[str, list] = {"id": [], "question": [], "context": []}
        for number, text in enumerate(texts, 1):
            try:
                item = json.loads(text)
            except json.JSONDecodeError:
                item = None
            if not (isinstance(item, dict) and isinstance(item.get(cols.question), str) and item[cols.question].strip()
                    and isinstance(item.get(cols.context), str) and item[cols.context].strip()):
                raise AdaptError(f'input {number}: give a JSON object {{"{cols.question}": "...", "{cols.context}": '
                                 f'"..."}} per line, not {text[:60]!r}')
            columns["id"].append(str(item.get("id", number)))
            columns["question"].append(item[cols.question])
            columns["context"].append(item[cols.context])
        return Dataset.from_dict(columns)

    def inspect_split(self, ds: Dataset) -> dict[str, Any]:
        """For `adapt data inspect`: context windows per question (long contexts are read in several windows
        of train.max_length tokens overlapping by doc_stride, not truncated) and unanswerable questions."""
        windows = np.bincount(np.asarray(self.featurize(ds, "inspect")["example_index"]), minlength=len(ds))
        return {"windows": {"mean": round(float(windows.mean()), 2), "max": int(windows.max()),
                            "questions_with_several": int((windows > 1).sum())},
                "unanswerable": sum(not answers["text"] for answers in ds["answers"][:])}

    # ---- features -------------------------------------------------------------------------------
    def featurize_key(self) -> list[str]:
        # the n-best and null-score options only act after the model runs: changing them keeps the cache
        return [self.name, str(self.recipe.train.max_length), str(self.options.doc_stride),
                str(self.options.max_question_length)]

    def featurize(self, raw: Dataset, role: str) -> Dataset:
        """Question first, context second, the context cut into windows of `max_length` tokens that
        overlap by `doc_stride`. Training windows carry start/end token positions ([CLS] when the
        answer is not wholly inside); evaluation windows keep their example index and the character
        offsets of their context tokens (None elsewhere) to map spans back to text."""
        tokenizer, options = self.tokenizer, self.options
        if not tokenizer.is_fast:
            raise AdaptError("question answering needs a fast (Rust) tokenizer for offset mappings; "
                             "choose a model that ships tokenizer.json")
        max_length = self.recipe.train.max_length
        question_budget = min(options.max_question_length,
                              max_length - tokenizer.num_special_tokens_to_add(pair=True) - options.doc_stride - 1)
        if question_budget < 1:
            raise AdaptError(f"task_options.doc_stride={options.doc_stride} leaves no room in train.max_length="
                             f"{max_length}; use a doc_stride of at most about max_length/3")
        training = role == "train"

        def encode(batch, indices):
            questions = [cut_question(tokenizer, q.lstrip(), question_budget) for q in batch["question"]]
            enc = tokenizer(questions, batch["context"], truncation="only_second", max_length=max_length,
                            stride=options.doc_stride, return_overflowing_tokens=True, return_offsets_mapping=True)
            window_example = enc.pop("overflow_to_sample_mapping")
            all_offsets = enc.pop("offset_mapping")
            starts, ends, example_index, context_offsets = [], [], [], []
            for window, offsets in enumerate(all_offsets):
                sequence_ids = enc.sequence_ids(window)
                example = window_example[window]
                if training:
                    start, end = answer_tokens(batch["answers"][example], offsets, sequence_ids)
                    starts.append(start)
                    ends.append(end)
                else:
                    example_index.append(indices[example])
                    context_offsets.append([list(o) if s == 1 else None for o, s in zip(offsets, sequence_ids)])
            if training:
                enc["start_positions"], enc["end_positions"] = starts, ends
            else:
                enc["example_index"], enc["offset_mapping"] = example_index, context_offsets
            enc["length"] = [len(ids) for ids in enc["input_ids"]]
            return enc

        return raw.map(encode, batched=True, with_indices=True, remove_columns=raw.column_names,
                       desc=f"tokenizing {role}")

    def collate(self, rows: dict[str, list]) -> dict[str, torch.Tensor]:
        return pad_batch(rows, self.tokenizer.pad_token_id or 0, skip=("length", "offset_mapping", "example_index"))

    # ---- loss and evaluation --------------------------------------------------------------------------
    def loss(self, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per window: (start CE + end CE) / 2, summed over the batch."""
        out = model(**model_inputs(batch))
        start = F.cross_entropy(out.start_logits.float(), batch["start_positions"], reduction="sum")
        end = F.cross_entropy(out.end_logits.float(), batch["end_positions"], reduction="sum")
        return (start + end) / 2, torch.tensor(len(batch["start_positions"]))

    def count_targets(self, batch: dict[str, torch.Tensor]) -> int:
        return len(batch["start_positions"])

    def eval_step(self, model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The top n_best start and end logits (and their positions) per window and its null score,
        so only [batch, n_best] leaves the device rather than [batch, seq_len]."""
        out = model(**model_inputs(batch))
        start, end = out.start_logits.float(), out.end_logits.float()
        null_score = start[:, CLS_INDEX] + end[:, CLS_INDEX]
        if "attention_mask" in batch:
            padding = batch["attention_mask"] == 0
            start = start.masked_fill(padding, torch.finfo(start.dtype).min)
            end = end.masked_fill(padding, torch.finfo(end.dtype).min)
        k = min(self.options.n_best, start.shape[1])
        start_values, start_indices = start.topk(k, dim=-1)
        end_values, end_indices = end.topk(k, dim=-1)
        return {"start_values": start_values, "start_indices": start_indices, "end_values": end_values,
                "end_indices": end_indices, "null_score": null_score}

    def postprocess(self, outputs: list[dict[str, Any]], features: Dataset, raw: Dataset) -> list[dict[str, Any]]:
        """Best span over all windows of each question: start/end pairs from the n-best lists that lie in
        the context, end >= start, at most max_answer_length tokens. `score` is the softmax probability
        of the answer among the n-best spans (and the null answer, for v2)."""
        options = self.options
        windows_of = defaultdict(list)
        for window, example in enumerate(features["example_index"]):
            windows_of[example].append(window)
        all_offsets = features["offset_mapping"]
        contexts = raw["context"]
        predictions = []
        for example, context in enumerate(contexts):
            candidates = []  # (score, start char, end char)
            null_score = None
            for window in windows_of[example]:
                record = outputs[window]
                window_null = float(record["null_score"])
                null_score = window_null if null_score is None else min(null_score, window_null)
                candidates += window_spans(record, all_offsets[window], options.max_answer_length)
            candidates = sorted(candidates, reverse=True)[: options.n_best]
            scores = [c[0] for c in candidates]
            best = candidates[0] if candidates else None
            answer_null = best is None or (options.version_2_with_negative
                                           and null_score - best[0] > options.null_score_diff_threshold)
            if options.version_2_with_negative:
                scores.append(null_score)
            probs = softmax(scores) if scores else [0.0]
            if answer_null:
                predictions.append({"answer": "", "score": probs[-1], "start": None, "end": None})
            else:
                _, start_char, end_char = best
                predictions.append({"answer": context[start_char:end_char], "score": probs[0],
                                    "start": start_char, "end": end_char})
        return predictions

    def score(self, predictions: list[dict[str, Any]], raw: Dataset) -> dict[str, Any]:
        answered = {qid: p["answer"] for qid, p in zip(raw["id"], predictions)}
        golds = {qid: list(answers["text"]) for qid, answers in zip(raw["id"], raw["answers"])}
        if self.options.version_2_with_negative:
            return squad_v2_scores(answered, golds)
        return squad_scores(answered, golds)

    def example_predictions(self, predictions: list[dict], raw: Dataset) -> list[dict]:
        # `prediction_text` and `answers` make the file both the --predictions and the --references of
        # `adapt eval --metric squad`
        return [{"id": row["id"], "title": row["title"], "question": row["question"], "answers": row["answers"],
                 "prediction_text": p["answer"], "score": p["score"], "start": p["start"], "end": p["end"]}
                for row, p in zip(raw.select_columns(["id", "title", "question", "answers"]).to_list(), predictions)]


# ---- helpers ----------------------------------------------------------------------------------------
def is_squad_articles(value) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], dict) and "paragraphs" in value[0]


def flatten_squad(articles: list, path: Path) -> list[dict]:
    """SQuAD articles -> one row per question in the canonical columns."""
    rows = []
    for a, article in enumerate(articles):
        where = f"{path}: data[{a}]"
        paragraphs = field(article, "paragraphs", list, where)
        title = str(article.get("title", "")) if isinstance(article, dict) else ""
        for p, paragraph in enumerate(paragraphs):
            where_p = f"{where}.paragraphs[{p}]"
            context = field(paragraph, "context", str, where_p)
            for q, qa in enumerate(field(paragraph, "qas", list, where_p)):
                where_q = f"{where_p}.qas[{q}]"
                impossible = field(qa, "is_impossible", bool, where_q, False)
                answers = [] if impossible else field(qa, "answers", list, where_q)
                for n, answer in enumerate(answers):
                    field(answer, "text", str, f"{where_q}.answers[{n}]")
                    field(answer, "answer_start", int, f"{where_q}.answers[{n}]")
                rows.append({
                    SQUAD_ENTRY: f"data[{a}].paragraphs[{p}].qas[{q}]",
                    "id": str(field(qa, "id", (str, int), where_q)), "title": title, "context": context,
                    "question": field(qa, "question", str, where_q),
                    "answers": {"text": [x["text"] for x in answers],
                                "answer_start": [x["answer_start"] for x in answers]},
                })
    return rows


def field(obj, key: str, kind, where: str, default=None):
    """obj[key], checked to be of `kind`; a missing key is an error unless a default is given."""
    if not isinstance(obj, dict):
        raise AdaptError(f"{where} is not a JSON object; see the SQuAD format in the docs")
    if key not in obj and default is not None:
        return default
    value = obj.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise AdaptError(f"{where}: '{key}' is {'missing' if key not in obj else 'not a ' + names}; "
                         f"each entry needs '{key}' ({names})")
    return value


ANSWERS_FORM = ('{"text": ["..."], "answer_start": [character offset]} or [{"text": "...", "answer_start": N}] '
                '(a JSON string of either in CSV files; empty lists for an unanswerable question)')


def answers_dict(value, where: str) -> dict[str, list]:
    """Answers as {"text": [...], "answer_start": [...]} from the Hub layout, a list of answer objects, or
    a JSON string of either (a CSV cell).

    Raises:
        AdaptError: for any other value, empty answer texts, or offsets that are not whole numbers >= 0.
    """
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise AdaptError(f"{where}: answers {value[:60]!r} are not JSON; give {ANSWERS_FORM}") from None
    if isinstance(value, list) and all(isinstance(a, dict) for a in value):
        value = {"text": [a.get("text") for a in value], "answer_start": [a.get("answer_start") for a in value]}
    if not (isinstance(value, dict) and isinstance(value.get("text"), list)
            and isinstance(value.get("answer_start"), list) and len(value["text"]) == len(value["answer_start"])):
        raise AdaptError(f"{where}: answers must be {ANSWERS_FORM}, with as many texts as offsets")
    for text, start in zip(value["text"], value["answer_start"]):
        if not isinstance(text, str) or not text.strip():
            raise AdaptError(f"{where}: an answer text is {'null' if text is None else repr(text)}; give the "
                             "answer's text (an unanswerable question has empty lists)")
        if isinstance(start, bool) or not isinstance(start, (int, float)) or start != int(start) or start < 0:
            raise AdaptError(f"{where}: answer_start {start!r} is not a character offset (a whole number >= 0)")
    return {"text": list(value["text"]), "answer_start": [int(s) for s in value["answer_start"]]}


def check_answer_offsets(context: str, answers: dict[str, list], where: str) -> None:
    for text, start in zip(answers["text"], answers["answer_start"]):
        if context[start:start + len(text)] != text:
            raise AdaptError(f"{where}: answer {text!r} is not at answer_start {start} of the context "
                             f"(found {context[start:start + len(text)]!r}); fix answer_start")


def cut_question(tokenizer, question: str, budget: int) -> str:
    """The question cut after `budget` tokens, so that a context window always keeps more than
    doc_stride tokens (the tokenizer cannot slide a window otherwise)."""
    enc = tokenizer(question, add_special_tokens=False, return_offsets_mapping=True)
    if len(enc["input_ids"]) <= budget:
        return question
    return question[: enc["offset_mapping"][budget - 1][1]]


def answer_tokens(answers: dict[str, list], offsets: list, sequence_ids: list) -> tuple[int, int]:
    """Token positions of the first answer in one window, or (CLS, CLS) when it is not wholly inside."""
    if not answers["answer_start"]:
        return CLS_INDEX, CLS_INDEX
    start_char = answers["answer_start"][0]
    end_char = start_char + len(answers["text"][0])
    context = [i for i, s in enumerate(sequence_ids) if s == 1]
    first, last = context[0], context[-1]
    if offsets[first][0] > start_char or offsets[last][1] < end_char:
        return CLS_INDEX, CLS_INDEX
    start = next(i for i in range(first, last + 1) if offsets[i][1] > start_char)
    end = next(i for i in range(last, first - 1, -1) if offsets[i][0] < end_char)
    return start, end


def window_spans(record: dict[str, Any], offsets: list, max_answer_length: int) -> list[tuple[float, int, int]]:
    """(score, start char, end char) of every valid pair of a window's n-best starts and ends."""
    starts, ends = np.asarray(record["start_indices"]), np.asarray(record["end_indices"])
    in_context = np.array([o is not None for o in offsets] + [False])  # the extra False catches padding
    starts_ok = in_context[np.minimum(starts, len(offsets))]
    ends_ok = in_context[np.minimum(ends, len(offsets))]
    span = ends[None, :] - starts[:, None]
    valid = starts_ok[:, None] & ends_ok[None, :] & (span >= 0) & (span < max_answer_length)
    # only valid pairs are summed: the n-best of a short window also holds padding positions, whose logits
    # eval_step set to the dtype's minimum, and two of those overflow to -inf (numpy's RuntimeWarning)
    i, j = np.nonzero(valid)
    scores = np.asarray(record["start_values"])[i] + np.asarray(record["end_values"])[j]
    return [(float(score), offsets[starts[a]][0], offsets[ends[b]][1]) for score, a, b in zip(scores, i, j)]


def softmax(scores: list[float]) -> list[float]:
    values = np.exp(np.asarray(scores) - max(scores))
    return (values / values.sum()).tolist()
