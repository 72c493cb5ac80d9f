"""Training checkpoints without pickle: weights, optimizer and RNG states in safetensors, the rest in JSON.
Each checkpoint is written to a temporary folder, fsync'd, and renamed into place (the parent folder fsync'd
after), so a killed run never leaves a checkpoint that `--resume` could pick half-written. A manifest of
every file's size and SHA-256, written last, lets `--resume` notice a checkpoint damaged afterwards (a
truncated copy, a bad disk) and fall back to the newest intact one. Each checkpoint also records what the
run it belongs to was (`run.json`: its trajectory settings, data fingerprints, batch size, gradient
accumulation, world size), so that a resume with other settings is refused."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from adapt import outputs
from adapt.errors import AdaptError

STATE_FILE = "trainer_state.json"
MANIFEST = "manifest.json"
RUN_FILE = "run.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def _optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, slots in sd["state"].items():
        for key, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for flat, value in list(tensors.items()) + list(meta["scalars"].items()):
        index, key = flat.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    np_state = np.random.get_state()
    tensors["numpy.keys"] = torch.from_numpy(np_state[1].astype(np.int64))
    py_state = random.getstate()
    meta = {"numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "python": [py_state[0], list(py_state[1]), py_state[2]]}
    return tensors, meta


def _set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    name, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((name, tensors["numpy.keys"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = meta["python"]
    random.setstate((version, tuple(internal), gauss_next))


def save_process_rng(folder: Path, rank: int) -> None:
    tensors, meta = _rng_state()
    save_file(tensors, str(folder / f"rng-{rank}.safetensors"))
    (folder / f"rng-{rank}.json").write_text(json.dumps(meta))


def load_process_rng(folder: Path, rank: int) -> None:
    path = folder / f"rng-{rank}.safetensors"
    if not path.exists():
        raise AdaptError(f"{folder}: no RNG state for process {rank}; resume with the same number of processes")
    _set_rng_state(load_file(str(path)), json.loads((folder / f"rng-{rank}.json").read_text()))


def save_main_state(folder: Path, weights: dict[str, torch.Tensor], optimizer, scheduler, state: dict) -> None:
    """Trainable weights, optimizer, scheduler and loop state (main process only)."""
    save_file(weights, str(folder / "model.safetensors"))
    tensors, meta = _optimizer_to_flat(optimizer)
    save_file(tensors, str(folder / "optimizer.safetensors"))
    (folder / "optimizer.json").write_text(json.dumps(meta))
    save_loop_state(folder, scheduler, state)


def save_loop_state(folder: Path, scheduler, state: dict) -> None:
    """Scheduler and loop state alone (main process only): for FSDP runs, whose weights and optimizer state
    every process writes (adapt.fsdp.ShardedWeights.save_checkpoint)."""
    (folder / "scheduler.json").write_text(json.dumps(scheduler.state_dict()))
    (folder / STATE_FILE).write_text(json.dumps(state, indent=2))


def load_state(folder: Path, weights, optimizer, scheduler) -> dict:
    """Restore what save_main_state wrote; `weights` is an adapt.precision.TrainableWeights."""
    weights.load(folder / "model.safetensors")
    optimizer.load_state_dict(_optimizer_from_flat(load_file(str(folder / "optimizer.safetensors")),
                                                   json.loads((folder / "optimizer.json").read_text())))
    return load_loop_state(folder, scheduler)


def load_loop_state(folder: Path, scheduler) -> dict:
    """Restore the scheduler and return the loop state that save_loop_state wrote."""
    scheduler.load_state_dict(json.loads((folder / "scheduler.json").read_text()))
    return json.loads((folder / STATE_FILE).read_text())


def commit(tmp: Path, target: Path, run: dict) -> None:
    """Seal a checkpoint written into `tmp` and rename it to `target` (replacing an older one of that name):
    the run description and the manifest are added, modes set by the umask, every file and folder fsync'd
    before the rename and the parent after."""
    (tmp / RUN_FILE).write_text(json.dumps(run, indent=2))
    files = sorted(p for p in tmp.iterdir() if p.is_file() and p.name != MANIFEST)
    manifest = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    outputs.seal_tree(tmp)
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    outputs.fsync_dir(target.parent)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def damage(folder: Path) -> str | None:
    """Why the checkpoint in `folder` cannot be trusted (a file missing, of another size or content than its
    manifest says; for checkpoints without a manifest, unreadable JSON or safetensors headers), or None."""
    manifest_path = folder / MANIFEST
    if manifest_path.exists():
        try:
            manifest = json.loads(manifest_path.read_text())
        except (ValueError, UnicodeDecodeError):
            return f"{MANIFEST} is not valid JSON"
        for name, expected in manifest.items():
            path = folder / name
            if not path.is_file():
                return f"{name} is missing"
            if path.stat().st_size != expected["bytes"]:
                return f"{name} has {path.stat().st_size} bytes, {expected['bytes']} were written"
            if _sha256(path) != expected["sha256"]:
                return f"{name} differs from what was written (SHA-256 mismatch)"
        return None
    from safetensors import safe_open

    for path in sorted(folder.iterdir()):
        try:
            if path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".safetensors":
                with safe_open(str(path), "pt") as handle:
                    handle.keys()
        except Exception as err:  # noqa: BLE001 - any failure to read is damage
            return f"{path.name} cannot be read ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
    return None


def latest_intact(checkpoint_dir: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """(the newest complete checkpoint that is not damaged, or None; the newer damaged ones skipped, with why)."""
    skipped = []
    for _, folder in reversed(step_checkpoints(checkpoint_dir)):
        why = damage(folder)
        if why is None:
            return folder, skipped
        skipped.append((folder, why))
    return None, skipped


def read_run(folder: Path) -> dict | None:
    """The run description a checkpoint was saved with (see `commit`); None for checkpoints of older versions."""
    path = folder / RUN_FILE
    return json.loads(path.read_text()) if path.exists() else None


def step_checkpoints(checkpoint_dir: Path) -> list[tuple[int, Path]]:
    """Complete step checkpoints, oldest first (temporary folders never match the name pattern)."""
    if not checkpoint_dir.exists():
        return []
    found = []
    for child in checkpoint_dir.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and (child / STATE_FILE).exists():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    found = step_checkpoints(checkpoint_dir)
    return found[-1][1] if found else None


def rotate(checkpoint_dir: Path, keep: int) -> None:
    for _, path in step_checkpoints(checkpoint_dir)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
