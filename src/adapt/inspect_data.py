"""`adapt data inspect`: what a recipe's data looks like before training (sizes, labels, token lengths,
truncation, duplicates, train/eval leakage), and refusal of data that cannot train anything."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
from datasets import Dataset

from adapt.data import input_columns
from adapt.errors import AdaptError

PERCENTILES = (50, 90, 95, 99)


def _as_text(value: Any) -> str:
    return " ".join(value) if isinstance(value, list) else str(value)


def example_keys(ds: Dataset, columns: list[str]) -> list[tuple[str, ...]]:
    """The input of each example as a hashable key (exact match, whitespace-trimmed)."""
    return [tuple(_as_text(row[c]).strip() for c in columns) for row in ds.select_columns(columns)]


def token_lengths(tokenizer, ds: Dataset, columns: list[str]) -> list[int]:
    """Tokens per example with special tokens and NO truncation: what the model would read if it could.
    Two input columns are encoded as a pair (text/text_pair, question/context); word lists as words."""
    if len(columns) == 1 and isinstance(ds[0][columns[0]], list):
        enc = tokenizer(list(ds[columns[0]]), is_split_into_words=True, truncation=False, verbose=False)
        return [len(ids) for ids in enc["input_ids"]]
    first = [_as_text(v) for v in ds[columns[0]]]
    rest = None
    if len(columns) > 1:
        rest = [" ".join(_as_text(row[c]) for c in columns[1:]) for row in ds.select_columns(columns[1:])]
    enc = tokenizer(first, rest, truncation=False, verbose=False)
    return [len(ids) for ids in enc["input_ids"]]


def length_summary(lengths: list[int], max_length: int | None = None) -> dict[str, Any]:
    arr = np.asarray(lengths)
    summary = {f"p{p}": int(np.percentile(arr, p, method="higher")) for p in PERCENTILES}
    summary["max"] = int(arr.max())
    summary["mean"] = round(float(arr.mean()), 1)
    if max_length is not None:
        summary["truncated"] = int((arr > max_length).sum())
        summary["truncated_share"] = round(float((arr > max_length).mean()), 4)
    return summary


def entity_counts(tag_rows: list[list]) -> Counter:
    """Entity spans per type in IOB/IOB2 tag sequences: a span starts at B-X, or at I-X not following X."""
    counts: Counter = Counter()
    for tags in tag_rows:
        previous = None
        for tag in tags:
            text = str(tag)
            prefix, _, kind = text.partition("-")
            if not kind:
                previous = None
                continue
            if prefix == "B" or kind != previous:
                counts[kind] += 1
            previous = kind
    return counts


def label_distribution(ds: Dataset) -> dict[str, int] | None:
    if "label" in ds.column_names and isinstance(ds[0]["label"], float):
        return None  # regression targets: scores, not classes to count
    if "label" in ds.column_names and isinstance(ds[0]["label"], list) and all(
            isinstance(v, str) for labels in ds["label"][:50] for v in labels):  # multi-label: each label counted
        return dict(Counter(v for labels in ds["label"][:] for v in labels).most_common())
    if "label" in ds.column_names and not isinstance(ds[0]["label"], (list, dict)):
        return dict(Counter(str(v) for v in ds["label"][:]).most_common())
    if "tags" in ds.column_names and isinstance(ds[0]["tags"], list):
        return dict(entity_counts(ds["tags"][:]).most_common())
    return None


def inspect_splits(splits: dict[str, Dataset], tokenizer, max_length: int | None, sources: dict[str, str],
                   group_column: str | None = None) -> tuple[dict[str, Any], dict[str, list[int]]]:
    """(report, token lengths per split) for already-loaded raw splits; raises AdaptError for unusable data."""
    columns = {name: input_columns(ds, group_column) for name, ds in splits.items()}
    for name, cols in columns.items():
        if not cols:
            raise AdaptError(f"{sources[name]}: the {name} split has no text column to inspect "
                             f"(columns: {', '.join(splits[name].column_names)})")
    keys = {name: example_keys(ds, columns[name]) for name, ds in splits.items()}
    # data that cannot train (empty texts or labels, one class, ...) was refused when the task read the splits,
    # on the path `adapt finetune` takes too (Task.read_source, the task's normalize and setup)
    train_keys = set(keys["train"])
    report: dict[str, Any] = {"max_length": max_length, "input_columns": columns["train"], "splits": {}}
    lengths: dict[str, list[int]] = {}
    for name, ds in splits.items():
        lengths[name] = token_lengths(tokenizer, ds, columns[name])
        entry: dict[str, Any] = {
            "source": sources[name],
            "examples": len(ds),
            "duplicates": len(keys[name]) - len(set(keys[name])),
            "tokens": length_summary(lengths[name], max_length),
        }
        if name != "train":
            entry["overlap_with_train"] = sum(k in train_keys for k in keys[name])
        labels = label_distribution(ds)
        if labels is not None:
            entry["labels"] = labels
        if "target" in ds.column_names and isinstance(ds[0]["target"], str):
            entry["target_tokens"] = length_summary(token_lengths(tokenizer, ds, ["target"]))
        report["splits"][name] = entry
    report["warnings"] = data_warnings(report)
    return report, lengths


def data_warnings(report: dict[str, Any]) -> list[str]:
    notes = []
    for name, entry in report["splits"].items():
        if entry.get("overlap_with_train"):
            notes.append(f"{entry['overlap_with_train']} {name} examples also appear in train (leakage inflates scores)")
        if entry["tokens"].get("truncated_share", 0) > 0.05:
            notes.append(f"{entry['tokens']['truncated_share']:.1%} of {name} examples exceed train.max_length="
                         f"{report['max_length']} tokens and would be truncated")
        labels = entry.get("labels")
        if name != "train" and labels is not None and len(labels) == 1 and entry["examples"] > 1:
            notes.append(f"every {name} example has the same label '{next(iter(labels))}'")
    return notes


def inspect_recipe(recipe) -> tuple[dict[str, Any], dict[str, list[int]]]:
    """Load the recipe's splits exactly as `adapt finetune` does (the same reading, validation, tokenization
    and preflight checks, through `adapt.train.load_task_data` and `adapt.preflight.check_run`) and inspect them."""
    from accelerate.state import AcceleratorState

    from adapt.train import load_task_data, make_accelerator

    AcceleratorState._reset_state()
    task, model_path, splits, _ = load_task_data(recipe, make_accelerator(), output=False)
    tokenizer = task.tokenizer
    cfg = recipe.data
    sources = {"train": cfg.train,
               "validation": cfg.validation or f"{cfg.train} (validation carved from train)",
               "test": cfg.test or ""}
    # plain text for a language model is packed into blocks of block_size tokens: nothing is truncated
    packed = hasattr(task.options, "block_size") and input_columns(splits["train"]) == ["text"]
    # question answering reads a long context in several overlapping windows: nothing is truncated either;
    # the task reports its windows per question and its unanswerable questions instead
    windowed = hasattr(task, "inspect_split")
    limit = None if packed or windowed else recipe.train.max_length
    report, lengths = inspect_splits(splits, tokenizer, limit, sources, task.group_column)
    if windowed:
        for name, ds in splits.items():
            report["splits"][name].update(task.inspect_split(ds))
    report.update({"recipe": recipe.name, "task": recipe.task, "tokenizer": recipe.tokenizer or recipe.model})
    return report, lengths


def inspect_tables(report: dict[str, Any]) -> list:
    """Rich tables for the terminal: one overview of the splits, one of the label counts if any."""
    from rich.table import Table

    splits = report["splits"]
    overview = Table(title=f"adapt data inspect: {report['recipe']} ({report['task']}, tokenizer {report['tokenizer']})",
                     header_style="bold")
    overview.add_column("")
    for name in splits:
        overview.add_column(name, justify="right", overflow="fold")

    def row(label: str, value) -> None:
        overview.add_row(label, *[value(entry) for entry in splits.values()])

    row("source", lambda e: e["source"])
    row("examples", lambda e: f"{e['examples']:,}")
    for p in (*(f"p{p}" for p in PERCENTILES), "max"):
        row(f"tokens {p}", lambda e, p=p: str(e["tokens"][p]))
    if report["max_length"] is not None:
        row(f"truncated at {report['max_length']}",
            lambda e: f"{e['tokens']['truncated']:,} ({e['tokens']['truncated_share']:.1%})")
    if any("target_tokens" in e for e in splits.values()):
        row("target tokens p95 / max", lambda e: f"{e['target_tokens']['p95']} / {e['target_tokens']['max']}"
            if "target_tokens" in e else "-")
    if any("windows" in e for e in splits.values()):
        row("context windows mean / max", lambda e: f"{e['windows']['mean']} / {e['windows']['max']}")
        row("questions in >1 window", lambda e: f"{e['windows']['questions_with_several']:,}")
        row("unanswerable questions", lambda e: f"{e['unanswerable']:,}")
    row("exact duplicates", lambda e: f"{e['duplicates']:,}")
    row("also in train", lambda e: f"{e['overlap_with_train']:,}" if "overlap_with_train" in e else "-")
    tables = [overview]
    names = sorted({label for e in splits.values() for label in e.get("labels", {})})
    if names:
        labels = Table(title="label counts (entity spans for tagged data)", header_style="bold")
        labels.add_column("label / entity type")
        for name in splits:
            labels.add_column(name, justify="right")
        for label in names:
            cells = []
            for entry in splits.values():
                count = entry.get("labels", {}).get(label, 0)
                total = sum(entry.get("labels", {}).values()) or 1
                cells.append(f"{count:,} ({count / total:.1%})")
            labels.add_row(label, *cells)
        tables.append(labels)
    return tables
