"""Diagnostic PNGs: a run's loss curve, confusion matrix and per-entity F1 bars, and the token-length
histogram of `adapt data inspect`. Files are written atomically (temp file, then rename)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

CONFUSION_PNG = "confusion_matrix.png"
PER_TYPE_PNG = "per_type_f1.png"
MAX_CONFUSION_LABELS = 50  # beyond this a matrix is unreadable; such runs get no confusion plot


def _figure(width: float, height: float):
    """(figure, axes) of a matplotlib Figure made without pyplot (no global figure manager or GUI backend, and
    pyplot's import time saved: matplotlib's advice for figures made outside an interactive session)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    return fig, fig.subplots()


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, format=path.suffix.lstrip(".").lower() or "png")  # the format of the name asked for
    os.replace(tmp, path)
    return path


def confusion_matrix_png(gold: list[str], predicted: list[str], path: Path, title: str) -> Path:
    """Counts of (gold row, predicted column), with each cell's share of its gold row as the colour."""
    import numpy as np

    names = sorted(set(gold) | set(predicted))
    index = {n: i for i, n in enumerate(names)}
    counts = np.zeros((len(names), len(names)), dtype=int)
    for g, p in zip(gold, predicted):
        counts[index[g], index[p]] += 1
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.55 * len(names) + 2.5)
    fig, ax = _figure(size, size * 0.85)
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    if len(names) <= 20:
        for (row, col), value in np.ndenumerate(counts):
            ax.text(col, row, str(value), ha="center", va="center",
                    color="white" if shares[row, col] > 0.5 else "black", fontsize=8)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of gold row")
    ax.set_title(title)
    return _save(fig, path)


def loss_curve_png(log: list[dict], path: Path, metric: str | None, title: str) -> Path:
    """Training loss (and the eval metric on a second axis) against optimizer steps."""
    train = [r for r in log if r.get("kind") == "train"]
    evals = [r for r in log if r.get("kind") == "eval"]
    fig, ax = _figure(7, 4)
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], color="tab:blue", label="train loss")
    if evals and any("loss" in r for r in evals):
        ax.plot([r["step"] for r in evals if "loss" in r], [r["loss"] for r in evals if "loss" in r],
                "o--", color="tab:cyan", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if metric and evals and any(metric in r for r in evals):
        ax2 = ax.twinx()
        points = [(r["step"], r[metric]) for r in evals if metric in r]
        ax2.plot(*zip(*points), "s-", color="tab:orange", label=f"eval {metric}")
        ax2.set_ylabel(metric)
        handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
        ax.legend(handles=handles, loc="center right")
    else:
        ax.legend(loc="upper right")
    ax.set_title(title)
    return _save(fig, path)


def per_type_f1_png(per_type: dict[str, dict[str, Any]], path: Path, title: str) -> Path:
    """One horizontal bar per entity type (any keys), labelled with its F1 and support."""
    names = sorted(per_type, key=lambda n: per_type[n].get("f1", 0.0))
    scores = [float(per_type[n].get("f1", 0.0)) for n in names]
    fig, ax = _figure(6.5, 1.2 + 0.4 * len(names))
    ax.barh(names, scores, color="tab:green")
    for y, name in enumerate(names):
        support = per_type[name].get("support")
        note = f"{scores[y]:.3f}" + (f"  (n={support})" if support is not None else "")
        ax.text(min(scores[y] + 0.01, 0.8), y, note, va="center", fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("F1 (validation)")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title)
    return _save(fig, path)


def length_histogram_png(lengths: dict[str, list[int]], max_length: int | None, path: Path, title: str) -> Path:
    """Token lengths per split (overlaid), with the truncation limit as a vertical line."""
    fig, ax = _figure(7, 4)
    longest = max(max(values) for values in lengths.values())
    bins = min(60, max(10, longest // 4))
    for name, values in lengths.items():
        ax.hist(values, bins=bins, range=(0, longest), alpha=0.5, weights=[1 / len(values)] * len(values),
                label=f"{name} ({len(values):,})")
    if max_length is not None:
        ax.axvline(max_length, color="tab:red", linestyle="--", label=f"train.max_length = {max_length}")
    ax.set_xlabel("tokens per example (no truncation)")
    ax.set_ylabel("share of examples per bin")
    ax.legend()
    ax.set_title(title)
    return _save(fig, path)


def _scalar_pairs(rows: list[dict]) -> tuple[list[str], list[str]] | None:
    """(gold, predicted) label strings when a run's predictions are one label per example."""
    if not rows or not all("label" in r and "prediction" in r for r in rows):
        return None
    if any(isinstance(r["label"], (list, dict)) or isinstance(r["prediction"], (list, dict)) for r in rows):
        return None
    return [str(r["label"]) for r in rows], [str(r["prediction"]) for r in rows]


def write_run_plots(output_dir: Path) -> list[Path]:
    """The plots a finished run supports: a confusion matrix when predictions are single labels, per-type
    F1 bars when validation metrics have `per_type`. Returns the files written (none is not an error)."""
    output_dir = Path(output_dir)
    written = []
    name = output_dir.name
    predictions = output_dir / "predictions_validation.jsonl"
    if predictions.exists():
        rows = [json.loads(line) for line in predictions.read_text(encoding="utf-8").splitlines() if line.strip()]
        pairs = _scalar_pairs(rows)
        if pairs and len(set(pairs[0]) | set(pairs[1])) <= MAX_CONFUSION_LABELS:
            written.append(confusion_matrix_png(*pairs, output_dir / CONFUSION_PNG, f"{name}: validation confusion"))
    metrics_file = output_dir / "metrics.json"
    if metrics_file.exists():
        per_type = json.loads(metrics_file.read_text()).get("validation", {}).get("per_type")
        if isinstance(per_type, dict) and per_type and all(isinstance(v, dict) for v in per_type.values()):
            written.append(per_type_f1_png(per_type, output_dir / PER_TYPE_PNG, f"{name}: F1 per entity type"))
    return written
