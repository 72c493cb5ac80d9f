"""Reading raw examples: local CSV/TSV/JSON/JSONL/Parquet files, Hugging Face Hub dataset ids and embedded
datasets, with clear errors for bad files; carving a seeded validation split; a tokenization cache."""

from __future__ import annotations

import bz2
import csv
import gzip
import hashlib
import io
import json
import lzma
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from datasets import Dataset, load_from_disk

from adapt import assets
from adapt.errors import AdaptError

TABLE_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".parquet")
_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


def split_suffix(path: Path) -> tuple[str, str]:
    """('.tsv', '.gz') for data.tsv.gz; ('.tsv', '') for data.tsv."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _OPENERS:
        return (suffixes[-2] if len(suffixes) > 1 else ""), suffixes[-1]
    return (suffixes[-1] if suffixes else ""), ""


def read_text(path: Path) -> str:
    """Whole file as UTF-8 text (transparently decompressed); non-UTF-8 bytes are an error naming the line."""
    path = Path(path)
    if not path.exists():
        raise AdaptError(f"data file {path} does not exist; check the path (relative to {Path.cwd()})")
    _, compression = split_suffix(path)
    opener = _OPENERS.get(compression, open)
    with opener(path, "rb") as handle:
        raw = handle.read()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise AdaptError(
            f"{path}: line {line} is not valid UTF-8 (byte 0x{raw[err.start]:02x}); re-save the file as UTF-8"
        ) from None


def read_jsonl(path: Path, text: str | None = None) -> list[dict]:
    text = read_text(path) if text is None else text
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise AdaptError(f"{path}: line {number} is not valid JSON ({err.msg}); fix or remove that line") from None
        if not isinstance(row, dict):
            raise AdaptError(f"{path}: line {number} is not a JSON object")
        rows.append(row)
    return rows


def read_table(path: Path) -> Dataset:
    """A local tabular file as a Dataset, one row per example."""
    path = Path(path)
    kind, _ = split_suffix(path)
    if kind not in TABLE_SUFFIXES:
        raise AdaptError(f"{path}: unsupported file type '{kind or path.name}'; use one of {', '.join(TABLE_SUFFIXES)}")
    if kind == ".parquet":
        import pandas as pd

        if not path.exists():
            read_text(path)  # raises the standard missing-file error
        return Dataset.from_pandas(pd.read_parquet(path), preserve_index=False)
    text = read_text(path)
    if kind in (".csv", ".tsv"):
        delimiter = "\t" if kind == ".tsv" else ","
        # TSV files in NLP (GLUE) are unquoted; quotes inside sentences are literal characters
        quoting = csv.QUOTE_NONE if kind == ".tsv" else csv.QUOTE_MINIMAL
        reader = csv.reader(io.StringIO(text), delimiter=delimiter, quoting=quoting)
        header = next(reader, None)
        if header is None:
            raise AdaptError(f"{path}: the file is empty; it needs a header line and at least one example")
        header = [h.strip() for h in header]
        columns: dict[str, list] = {h: [] for h in header}
        for number, row in enumerate(reader, 2):
            if not row:
                continue
            if len(row) != len(header):
                raise AdaptError(
                    f"{path}: line {number} has {len(row)} fields but the header has {len(header)}; fix that line"
                )
            for name, value in zip(header, row):
                columns[name].append(value)
        return Dataset.from_dict(columns)
    if kind == ".json" and text.lstrip().startswith(("[", "{")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            if err.msg == "Extra data":  # one object per line: JSON Lines under a .json name
                return Dataset.from_list(read_jsonl(path, text))
            raise AdaptError(f"{path}: line {err.lineno} is not valid JSON ({err.msg})") from None
        if isinstance(data, dict) and "data" in data and isinstance(data["data"], list):
            data = data["data"]
        if not isinstance(data, list):
            raise AdaptError(f"{path}: expected a JSON list of objects (or JSON Lines, one object per line)")
        return Dataset.from_list(data)
    return Dataset.from_list(read_jsonl(path, text))


def is_local(ref: str) -> bool:
    return Path(ref).exists() or any(s in TABLE_SUFFIXES for s in Path(ref).suffixes) or "/" in ref and ref.startswith((".", "/", "~"))


def load_hub_split(ref: str, config: str | None, split: str) -> Dataset:
    """A split of a Hugging Face Hub dataset (needs network or a populated HF cache)."""
    from datasets import load_dataset

    try:
        return load_dataset(ref, config, split=split)
    except Exception as err:  # the Hub client raises many different types
        reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise AdaptError(
            f"could not load '{ref}' split '{split}' from the Hugging Face Hub ({reason}); "
            "check the dataset id and your connection, or point --data at a local file"
        ) from None


def check_not_empty(ds: Dataset, source: str) -> None:
    if len(ds) == 0:
        raise AdaptError(f"{source}: the split has no examples; give a file with at least one example")


def require_columns(ds: Dataset, names: list[str], source: str) -> None:
    for name in names:
        if name not in ds.column_names:
            raise AdaptError(
                f"{source}: no column '{name}' (columns: {', '.join(ds.column_names)}); "
                f"map it with data.columns (e.g. data.columns.text=sentence)"
            )


def carve_validation(ds: Dataset, fraction: float, seed: int, group_column: str | None = None) -> tuple[Dataset, Dataset]:
    """Seeded train/validation split. With `group_column` whole groups (e.g. SQuAD articles) go to one side,
    so no group appears in both."""
    if len(ds) < 2:
        raise AdaptError("cannot carve a validation split from fewer than 2 examples; give --validation")
    if group_column is None:
        parts = ds.train_test_split(test_size=fraction, seed=seed, shuffle=True)
        return parts["train"], parts["test"]
    import random

    groups = sorted(set(ds[group_column]))
    random.Random(seed).shuffle(groups)
    n_val = max(1, round(len(groups) * fraction))
    val_groups = set(groups[:n_val])
    membership = [g in val_groups for g in ds[group_column]]
    train_idx = [i for i, v in enumerate(membership) if not v]
    val_idx = [i for i, v in enumerate(membership) if v]
    return ds.select(train_idx), ds.select(val_idx)


def fingerprint_source(ref: str) -> str:
    """Identity of a data source for the tokenization cache: path + size + mtime for files."""
    path = Path(ref)
    if path.exists():
        stat = path.stat()
        return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    if assets.is_embedded(ref):
        return f"{ref}:{assets.embedded_dataset_path(ref).stat().st_size}"
    return ref


def cached_map(key_parts: list[str], build: Callable[[], Dataset], enabled: bool = True) -> tuple[Dataset, bool]:
    """Return `build()`'s dataset, cached on disk under a hash of `key_parts`. Second identical runs load
    the tokenized features instead of re-tokenizing. Returns (dataset, was_cached)."""
    if not enabled:
        return build(), False
    digest = hashlib.sha256("\n".join(key_parts).encode()).hexdigest()[:24]
    target = assets.cache_dir() / "features" / digest
    if (target / "dataset_info.json").exists():
        return load_from_disk(str(target)), True
    ds = build()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{digest}-"))
    try:
        ds.save_to_disk(str(tmp))
        tmp.rename(target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "dataset_info.json").exists():
            raise
    return load_from_disk(str(target)), False


def token_ids(features: Dataset, extra: list[int] = ()) -> "torch.Tensor":
    """The sorted distinct token ids of the features' `input_ids`, plus `extra` (e.g. special tokens)."""
    import numpy as np
    import pyarrow.compute as pc
    import torch

    column = features.with_format("arrow")["input_ids"]  # honours a selection's index mapping
    ids = pc.unique(pc.list_flatten(column)).to_numpy(zero_copy_only=False)
    return torch.from_numpy(np.union1d(ids, np.asarray(list(extra), dtype=ids.dtype)).astype(np.int64))
