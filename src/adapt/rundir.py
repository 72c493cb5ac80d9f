"""The life of a run's output directory: who may use it (a lock), what `--resume`/`--overwrite` may do with
what is there, stale temporary folders of killed runs, and the swap that replaces an old run only once its
replacement has finished.

What counts as an adapt run: a folder holding `recipe.yaml` (a mapping with `task` and `model`) and
`train_log.jsonl`; every run writes both before its first step. `--overwrite` replaces only such folders.

Files next to the output directory (in its parent), all named after it:
- `.NAME.lock`: the lock file (flock; holds the holder's pid and host; removed on release; the kernel
  releases the lock of a process that dies, so a stale file never blocks);
- `.NAME.adapt-new`: a run started with `--overwrite`, built here and swapped in when it has finished;
- `.NAME.adapt-old`: the replaced run during that swap (restored at the next start if the swap was cut short).
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from adapt import outputs
from adapt.errors import AdaptError

RUN_MARKERS = ("recipe.yaml", "train_log.jsonl")
# temporary names adapt's own writers use inside a run folder and its checkpoints folder: `.tmp-*` (atomic
# files and folders, checkpoints being written, `.tmp-.final-*` of older versions), `.old-*` (replaced folders,
# older versions), `.final` (final artefacts being moved into place)
TEMP_NAME = re.compile(r"^\.(tmp-.*|old-.*|final)$")
# recipe keys a resumed run may change: they decide where and how often things are written or shown, not the
# weights. max_steps/epochs are not among them: they set the learning-rate schedule from the first step.
SAFE_TO_CHANGE = ("name", "description", "output_dir", "tracking", "train.eval_steps", "train.eval_batch_size",
                  "train.save_steps", "train.save_total_limit", "train.log_steps", "train.num_workers",
                  "train.compile", "data.test", "data.test_split")
WRITE_ERRNOS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
                errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                errno.EPERM: "permission denied"}


def is_adapt_run(folder: Path) -> bool:
    """True when `folder` holds an adapt run (finished or not): see the module docstring."""
    return all((folder / name).is_file() for name in RUN_MARKERS) and _has_adapt_recipe(folder)


def is_adapt_export(folder: Path) -> bool:
    """True when `folder` holds what `adapt export --merge` or `--format onnx` writes: a model (config.json and
    safetensors weights, or model.onnx) with adapt's recipe.yaml (a mapping with `task` and `model`) beside it."""
    return ((folder / "config.json").is_file() and (any(folder.glob("*.safetensors")) or (folder / "model.onnx").is_file())
            and (folder / "recipe.yaml").is_file() and _has_adapt_recipe(folder))


def _has_adapt_recipe(folder: Path) -> bool:
    try:
        recipe = yaml.safe_load((folder / "recipe.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(recipe, dict) and "task" in recipe and "model" in recipe


def has_content(folder: Path) -> bool:
    """True when `folder` exists and holds anything besides adapt's stale temporary files."""
    return folder.is_dir() and any(not TEMP_NAME.match(p.name) for p in folder.iterdir())


def clean_stale_temporaries(folder: Path) -> list[Path]:
    """Remove adapt's temporary files and folders in `folder` and `folder/checkpoints`, left by runs that were
    killed while writing. Only call it while holding the folder's RunLock: then no live run owns them.
    Returns what was removed."""
    removed = []
    for parent in (folder, folder / "checkpoints"):
        if not parent.is_dir():
            continue
        for item in parent.iterdir():
            if TEMP_NAME.match(item.name):
                if item.is_dir() and not item.is_symlink():
                    shutil.rmtree(item, ignore_errors=True)
                else:
                    item.unlink(missing_ok=True)
                removed.append(item)
    return removed


def write_error(err: BaseException, folders: tuple[Path, ...], resumable: bool = True) -> AdaptError | None:
    """The one-line error for a failed write under `folders` (disk full, read-only, no permission), or None
    when `err` is not one; `resumable`: the fix for a full disk may suggest --resume. safetensors reports I/O errors as its own exception type with the OS error code
    in the text; errors naming a file elsewhere (e.g. unreadable data) are left to their own handlers."""
    code = err.errno if isinstance(err, OSError) else None
    if code is None and type(err).__name__ == "SafetensorError":
        match = re.search(r"\(os error (\d+)\)|code: (\d+)", str(err))  # "...: No space left on device (os error 28)"
        code = int(match.group(1) or match.group(2)) if match else None
    if code not in WRITE_ERRNOS:
        return None
    where = getattr(err, "filename", None)
    roots = [Path(f).resolve() for f in folders]
    if where is not None and not any(Path(where).resolve().is_relative_to(root) for root in roots):
        return None
    if where is None and code in (errno.EACCES, errno.EPERM):
        return None  # a refused operation without a file name: not known to be one of the run's writes
    where = where or folders[0]
    fix = ("free some space (or lower train.save_total_limit) and run the same command"
           + (" with --resume" if resumable else "") if code in (errno.ENOSPC, errno.EDQUOT) else
           "choose a writable --output-dir")
    return AdaptError(f"cannot write {where}: {WRITE_ERRNOS[code]}; {fix}")


class RunLock:
    """An exclusive lock on an output directory (`.NAME.lock` beside it, see the module docstring), so that
    two `adapt finetune` never write one run. `with RunLock(dir):`; raises AdaptError naming the holder's pid
    when another live process holds it, or when the parent folder is not writable."""

    def __init__(self, output_dir: Path, enabled: bool = True):
        self.output_dir = Path(output_dir)
        resolved = self.output_dir.resolve()
        self.path = resolved.parent / f".{resolved.name}.lock"
        self.enabled = enabled
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        if not self.enabled:
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise write_error(err, (self.path.parent.parent,)) or AdaptError(
                f"cannot create {self.path.parent}: {err.strerror}; choose another --output-dir") from None
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as err:
                raise write_error(err, (self.path.parent,)) or AdaptError(
                    f"cannot create the lock file {self.path}: {err.strerror}; choose another --output-dir") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").split()
                os.close(fd)
                who = f"pid {holder[0]} on {holder[1]}" if len(holder) >= 2 else "another process"
                raise AdaptError(f"output directory {self.output_dir} is in use by another adapt finetune ({who}, "
                                 f"lock {self.path}); wait for it to end or choose another --output-dir") from None
            # a releasing holder unlinks the file: if ours is no longer the one at the path, lock afresh
            try:
                current = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if current:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)  # while still holding it: see the inode check above
            os.close(self.fd)
            self.fd = None


def flat_settings(recipe_dict: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A recipe as {dotted key: value}, nested sections flattened (lists and task/peft options kept whole)."""
    flat = {}
    for key, value in recipe_dict.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and name not in ("task_options", "peft.options"):
            flat.update(flat_settings(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def trajectory_settings(recipe) -> dict[str, Any]:
    """The recipe keys that decide the trained weights: all but SAFE_TO_CHANGE, as {dotted key: value}."""
    flat = flat_settings(recipe.model_dump(mode="json"))
    return {k: v for k, v in flat.items() if k not in SAFE_TO_CHANGE}


def describe_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """`key: old -> new` for every key whose value differs (a missing key reads as `unset`)."""
    changes = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key, "unset"), new.get(key, "unset")
        if before != after:
            changes.append(f"{key}: {before} -> {after}")
    return changes


@dataclass
class RunPlan:
    """What a run does with its output directory. mode: `new` (empty or missing), `overwrite` (built in
    `work_dir` beside it, swapped in at the end), `resume` (from `checkpoint`) or `restart` (--resume of an
    attempt that stopped before its first checkpoint: the same recipe starts afresh in place). `existed`:
    whether the output directory existed when planned; `touched`: set once `prepare` has written to it."""

    output_dir: Path
    work_dir: Path
    mode: str
    checkpoint: Path | None = None
    notices: tuple[str, ...] = ()
    existed: bool = True
    touched: bool = False

    @property
    def staging(self) -> Path:
        return staging_dir(self.output_dir)


def staging_dir(output_dir: Path) -> Path:
    resolved = output_dir.resolve()
    return resolved.parent / f".{resolved.name}.adapt-new"


def _replaced_dir(output_dir: Path) -> Path:
    resolved = output_dir.resolve()
    return resolved.parent / f".{resolved.name}.adapt-old"


def plan_run(output_dir: Path, recipe, overwrite: bool, resume: bool | str | None) -> RunPlan:
    """Decide, before any work and without writing anything, what the run will do with `output_dir`; raise
    AdaptError (naming the folder and the fix) when the request cannot be honoured."""
    from adapt import checkpoint

    output_dir = Path(output_dir)
    if resume:
        checkpoints = output_dir / "checkpoints"
        if isinstance(resume, str):
            folder = Path(resume)
            if not (folder / checkpoint.STATE_FILE).exists():
                raise AdaptError(f"--resume: no complete checkpoint in {folder}")
            damage = checkpoint.damage(folder)
            if damage:
                raise AdaptError(f"--resume-from {folder}: the checkpoint is damaged ({damage}); "
                                 f"choose an older one in {folder.parent}")
            return RunPlan(output_dir, output_dir, "resume", folder)
        folder, skipped = checkpoint.latest_intact(checkpoints)
        notices = tuple(f"skipping damaged checkpoint {path} ({why})" for path, why in skipped)
        if folder is not None:
            _check_writable(output_dir)
            return RunPlan(output_dir, output_dir, "resume", folder, notices)
        if skipped:
            raise AdaptError(f"--resume: every checkpoint in {checkpoints} is damaged ({skipped[-1][0].name}: "
                             f"{skipped[-1][1]}); start again with --overwrite")
        if is_adapt_run(output_dir) and not (output_dir / "metrics.json").exists():
            changes = _recipe_changes(output_dir / "recipe.yaml", recipe)
            if changes:
                raise AdaptError(f"--resume: {output_dir} holds an attempt that stopped before its first checkpoint, "
                                 f"with other settings ({'; '.join(changes)}); run the original command, or start "
                                 "this one with --overwrite instead of --resume")
            _check_writable(output_dir)
            return RunPlan(output_dir, output_dir, "restart", notices=(
                f"{output_dir} holds an attempt of this recipe that stopped before its first checkpoint: "
                "starting it afresh",))
        if is_adapt_run(output_dir) and (output_dir / "metrics.json").exists():
            raise AdaptError(f"--resume: {output_dir} holds a finished run ({finished_at(output_dir)}) and no "
                             "checkpoint to continue from; to train again pass --overwrite instead of --resume, or choose another "
                             "--output-dir (a finished run cannot be extended: --max-steps/--epochs set its "
                             "learning-rate schedule from the first step)")
        raise AdaptError(f"--resume: no complete checkpoint in {checkpoints}; start without --resume")
    if not has_content(output_dir):
        return RunPlan(output_dir, output_dir, "new", existed=output_dir.exists())
    if not overwrite:
        raise AdaptError(f"output directory {output_dir} is not empty; pass --overwrite to replace it, "
                         "--resume to continue it, or choose another --output-dir")
    if not is_adapt_run(output_dir):
        raise AdaptError(f"--overwrite: {output_dir} is not an adapt run (it has no {' and '.join(RUN_MARKERS)}), so "
                         "adapt will not delete it; remove it yourself or choose another --output-dir")
    _check_writable(output_dir)
    return RunPlan(output_dir, staging_dir(output_dir), "overwrite")


def finished_at(folder: Path) -> str:
    """`at step N` for a finished run folder (its metrics.json `train_steps`), else `its step is not recorded`."""
    import json

    try:
        steps = json.loads((folder / "metrics.json").read_text(encoding="utf-8")).get("train_steps")
    except (OSError, ValueError, AttributeError):
        steps = None
    return f"at step {steps}" if isinstance(steps, int) else "its step is not recorded"


def _check_writable(folder: Path) -> None:
    for path in (folder, folder / "checkpoints"):
        if path.exists() and not os.access(path, os.W_OK):
            raise AdaptError(f"cannot write {path}: permission denied; choose a writable --output-dir")


def _recipe_changes(path: Path, recipe) -> list[str]:
    from adapt.recipe import recipe_from_dict

    try:
        old = recipe_from_dict(yaml.safe_load(path.read_text(encoding="utf-8")), str(path))
    except (AdaptError, yaml.YAMLError, UnicodeDecodeError):
        return [f"{path} is not a readable recipe"]
    return describe_changes(trajectory_settings(old), trajectory_settings(recipe))


def recover_swap(output_dir: Path) -> None:
    """Repair an `--overwrite` swap that a killed process cut short (call while holding the RunLock, before
    `plan_run`): the replaced run goes back in place unless its replacement had already moved in."""
    replaced = _replaced_dir(output_dir)
    if replaced.exists():
        if output_dir.exists():
            shutil.rmtree(replaced)
        else:
            os.replace(replaced, output_dir)


def prepare(plan: RunPlan) -> None:
    """The run's first writes, once all validation has passed: remove the unfinished replacement and the
    stale temporaries of dead runs, create the work folder. Call while holding the RunLock."""
    plan.touched = True
    if plan.staging.exists():  # a replacement that never finished
        shutil.rmtree(plan.staging)
    clean_stale_temporaries(plan.output_dir)
    if plan.mode == "restart":  # the dead attempt's best weights must not stand in for this run's
        shutil.rmtree(plan.output_dir / "checkpoints", ignore_errors=True)
    plan.work_dir.mkdir(parents=True, exist_ok=True)


def commit(plan: RunPlan) -> None:
    """At the end of a successful run: an `overwrite` run replaces the old one (old aside, new in, old
    removed; a cut-short swap is repaired by `prepare` at the next start)."""
    if plan.mode != "overwrite":
        return
    replaced = _replaced_dir(plan.output_dir)
    os.replace(plan.output_dir, replaced)
    os.replace(plan.work_dir, plan.output_dir)
    outputs.fsync_dir(plan.output_dir.resolve().parent)
    shutil.rmtree(replaced)


def discard(plan: RunPlan) -> None:
    """After a failed or interrupted `overwrite` run: remove its partial replacement; the old run is untouched."""
    if plan.mode == "overwrite":
        shutil.rmtree(plan.work_dir, ignore_errors=True)


def remove_failed_attempt(plan: RunPlan) -> bool:
    """After a fresh run (`new`, or a `restart`ed attempt) stopped with an error: when it saved no complete
    checkpoint, remove what it wrote, leaving the output directory as the run found it (removed if the run
    created it, else empty), so the same command runs again without --overwrite. Runs with a checkpoint are
    kept, for --resume. Returns True when the attempt was removed. Call while holding the RunLock."""
    from adapt import checkpoint

    if plan.mode not in ("new", "restart") or not plan.touched or not plan.output_dir.is_dir():
        return False
    if checkpoint.step_checkpoints(plan.output_dir / "checkpoints"):
        return False
    if not plan.existed:
        shutil.rmtree(plan.output_dir, ignore_errors=True)
        return True
    for item in plan.output_dir.iterdir():
        if item.is_dir() and not item.is_symlink():
            shutil.rmtree(item, ignore_errors=True)
        else:
            item.unlink(missing_ok=True)
    return True
