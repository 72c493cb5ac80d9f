"""Writing run artefacts safely: atomic files and folders, the training log, the model card."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any


def umask_mode(mode: int) -> int:
    """`mode` (e.g. 0o666 for files, 0o777 for folders) as the process umask lets plain `open`/`mkdir` create
    it: tempfile's mkstemp/mkdtemp make 0600/0700, which saved artefacts must not keep."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


def fsync_dir(folder: Path) -> None:
    """Make new entries and renames in `folder` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def seal_tree(folder: Path) -> None:
    """Before renaming a folder written in place of a finished one: give each file and folder under it the
    mode the umask allows (some writers, e.g. transformers' shard writer, leave 0600 temporary files), then
    fsync every file and, deepest first, every folder."""
    file_mode, dir_mode = umask_mode(0o666), umask_mode(0o777)
    folders = []
    for root, dirs, files in os.walk(folder):
        folders.append(root)
        os.chmod(root, dir_mode)
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fchmod(fd, file_mode)
                os.fsync(fd)
            finally:
                os.close(fd)
    for root in reversed(folders):
        fsync_dir(Path(root))


def make_temp_dir(parent: Path, name: str) -> Path:
    """A new folder `parent/.tmp-NAME-XXXX` with the umask's usual mode; the `.tmp-` prefix lets the next
    run clean it up if this process dies (adapt.rundir.clean_stale_temporaries)."""
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".tmp-{name}-"))
    tmp.chmod(umask_mode(0o777))
    return tmp


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{path.name}-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fchmod(handle.fileno(), umask_mode(0o666))
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n")


def jsonl_text(records) -> str:
    """JSON Lines for records that may hold numpy/torch scalars."""
    return "".join(json.dumps(r, default=_jsonable) + "\n" for r in records)


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


class AtomicDir:
    """`with AtomicDir(target) as tmp:` write into tmp; on success tmp is renamed to target (replacing
    an older one), on failure it is removed. Readers never see a half-written folder."""

    def __init__(self, target: Path):
        self.target = Path(target)

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = make_temp_dir(self.target.parent, self.target.name)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        seal_tree(self.tmp)
        if self.target.exists():
            trash = self.target.with_name(f".tmp-old-{self.target.name}-{os.getpid()}")
            os.replace(self.target, trash)
            os.replace(self.tmp, self.target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(self.tmp, self.target)
        fsync_dir(self.target.parent)


def move_files_into(src: Path, dst: Path) -> None:
    """Move every file of src into dst, each by an atomic rename (same filesystem), durably."""
    for item in Path(src).iterdir():
        target = Path(dst) / item.name
        if target.is_dir() and item.is_dir():
            shutil.rmtree(target)
        os.replace(item, target)
    fsync_dir(Path(dst))


class JsonlLog:
    def __init__(self, path: Path, enabled: bool = True, append: bool = False):
        self.path, self.enabled = Path(path), enabled
        if enabled and not append:
            self.path.write_text("")

    def write(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(jsonl_text([record]))


def read_log(path: Path) -> list[dict]:
    if not Path(path).exists():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def scalar_metrics(metrics: dict) -> dict[str, float]:
    """The scalar entries of a metrics dict (per-class tables and reports left out)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def model_card(recipe, metrics: dict, n_examples: dict, pipeline_tag: str, base_model: str, extra: dict) -> str:
    scalar = scalar_metrics(metrics)
    rows = "\n".join(f"| {k} | {_fmt(v)} |" for k, v in scalar.items())
    t = recipe.train
    hyper = {
        "epochs": t.epochs, "max_steps": t.max_steps, "batch size (per device)": t.batch_size,
        "gradient accumulation": t.grad_accum, "learning rate": t.lr, "weight decay": t.weight_decay,
        "warmup ratio": t.warmup_ratio, "max grad norm": t.max_grad_norm, "max length": t.max_length,
        "seed": t.seed, **extra,
    }
    hyper_rows = "\n".join(f"| {k} | {v} |" for k, v in hyper.items())
    sizes = ", ".join(f"{k}: {v:,}" for k, v in n_examples.items())
    peft_line = f"\nAdapter: {recipe.peft.method} (r={recipe.peft.r}, alpha={recipe.peft.alpha}).\n" if recipe.peft else ""
    return f"""---
library_name: {"peft" if recipe.peft else "transformers"}
pipeline_tag: {pipeline_tag}
base_model: {base_model}
tags: [adapt, {recipe.task}]
---

# {recipe.name}

Fine-tuned with [adapt](https://github.com/) recipe `{recipe.name}` (task `{recipe.task}`) from `{recipe.model}`.
{peft_line}
## Data

- train: `{recipe.data.train}`
- validation: `{recipe.data.validation or f"{recipe.data.validation_fraction:.0%} carved from train (seed {t.seed})"}`
- test: `{recipe.data.test or "-"}`
- examples: {sizes}

## Hyperparameters

| setting | value |
|---|---|
{hyper_rows}

## Metrics

| metric | value |
|---|---|
{rows}

## Use

```python
from transformers import pipeline
pipe = pipeline("{pipeline_tag}", model="PATH_TO_THIS_FOLDER")
```

The full resolved recipe is in `recipe.yaml`; the training log is `train_log.jsonl`.
"""
