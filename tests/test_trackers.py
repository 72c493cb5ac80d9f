"""Experiment trackers (recipe key `tracking`): TensorBoard, MLflow (local file store) and W&B (offline), each read
back after a tiny run: the metrics equal train_log.jsonl's, the params are the resolved recipe (recipe.yaml), and
the model card README.md is there as an artefact."""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from pathlib import Path

import pytest
import yaml
from conftest import run_tiny_finetune


def flatten(value, prefix: str = "") -> dict:
    """recipe.yaml as dotted keys; lists and nulls as JSON text (independent of adapt.tracking)."""
    out = {}
    for key, inner in value.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(inner, dict) and inner:
            out.update(flatten(inner, name))
        else:
            out[name] = inner if isinstance(inner, (bool, int, float, str)) else json.dumps(inner)
    return out


def logged(run: Path) -> tuple[dict, dict]:
    """({step: train record}, {step: eval record}) from the run's train_log.jsonl."""
    rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    return ({r["step"]: r for r in rows if r["kind"] == "train"}, {r["step"]: r for r in rows if r["kind"] == "eval"})


def tiny_run(tiny_bert, sentiment_csv, tmp_path, tracker: str) -> tuple[Path, dict]:
    run = tmp_path / "run"
    final = run_tiny_finetune(tiny_bert, sentiment_csv, run, tmp_path / "cache", [("tracking", [tracker])])
    return run, final


def test_tensorboard_holds_metrics_recipe_and_card(tiny_bert, sentiment_csv, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, final = tiny_run(tiny_bert, sentiment_csv, tmp_path, "tensorboard")
    (hparams,) = (run / "tensorboard").glob("*/hparams.yml")
    params = yaml.safe_load(hparams.read_text())
    assert params == flatten(yaml.safe_load((run / "recipe.yaml").read_text()))
    assert params["train.lr"] == 1e-3 and params["train.max_steps"] == 6 and params["model"] == str(tiny_bert)
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    train, evals = logged(run)
    losses = {e.step: e.value for e in events.Scalars("train/loss")}
    assert losses == pytest.approx({step: r["loss"] for step, r in train.items()}, rel=1e-6)  # float32 in events
    assert sorted(losses) == [2, 4, 6]
    assert {e.step: e.value for e in events.Scalars("eval/accuracy")} == pytest.approx(
        {step: r["accuracy"] for step, r in evals.items()})
    (last,) = events.Scalars("final/validation/accuracy")
    assert last.step == 6 and last.value == pytest.approx(final["validation"]["accuracy"])
    (card,) = events.Tensors("model_card/text_summary")
    assert card.tensor_proto.string_val[0].decode() == (run / "README.md").read_text()


def test_mlflow_file_store_holds_metrics_recipe_and_card(tiny_bert, sentiment_csv, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    store = tmp_path / "mlruns"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file:{store}")
    run, final = tiny_run(tiny_bert, sentiment_csv, tmp_path, "mlflow")
    client = mlflow.MlflowClient(tracking_uri=f"file:{store}")
    experiment = client.get_experiment_by_name("sentiment")  # the recipe's name
    (record,) = client.search_runs([experiment.experiment_id])
    assert record.info.run_name == "run" and record.info.status == "FINISHED"
    recipe = flatten(yaml.safe_load((run / "recipe.yaml").read_text()))
    assert record.data.params == {key: str(value) for key, value in recipe.items()}  # MLflow keeps params as text
    train, evals = logged(run)
    history = client.get_metric_history(record.info.run_id, "train/loss")
    assert {m.step: m.value for m in history} == {step: r["loss"] for step, r in train.items()}
    assert {m.step: m.value for m in client.get_metric_history(record.info.run_id, "eval/f1_macro")} == {
        step: r["f1_macro"] for step, r in evals.items()}
    assert record.data.metrics["final/validation/accuracy"] == final["validation"]["accuracy"]
    assert [a.path for a in client.list_artifacts(record.info.run_id)] == ["README.md"]
    card = Path(client.download_artifacts(record.info.run_id, "README.md", str(tmp_path / "download")))
    assert card.read_text() == (run / "README.md").read_text()


def wandb_records(path: Path) -> list:
    """The protobuf records of a W&B transaction log (.wandb): a 7-byte header (':W&B', magic, version), then
    LevelDB-log blocks of 32 KiB, each record a 7-byte header (CRC, length, type FULL/FIRST/MIDDLE/LAST)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    position, payloads, pending = 7, [], b""
    while position + 7 <= len(data):
        left = 32768 - position % 32768
        if left < 7:  # a block's tail too short for a header is padding
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        chunk = data[position + 7:position + 7 + length]
        position += 7 + length
        if kind == 1:
            payloads.append(chunk)
        elif kind in (2, 3):
            pending += chunk
        elif kind == 4:
            payloads.append(pending + chunk)
            pending = b""
    records = []
    for payload in payloads:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        records.append(record)
    return records


def test_wandb_offline_run_holds_metrics_recipe_and_card(tiny_bert, sentiment_csv, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for variable, folder in (("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data"), ("WANDB_CONFIG_DIR", "config")):
        monkeypatch.setenv(variable, str(tmp_path / "wandb-home" / folder))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run, final = tiny_run(tiny_bert, sentiment_csv, tmp_path, "wandb")
    (log,) = (run / "wandb").glob("offline-run-*/run-*.wandb")  # in the run folder, ready for `wandb sync`
    records = wandb_records(log)
    kinds = [r.WhichOneof("record_type") for r in records]
    assert records[kinds.index("run")].run.project == "sentiment"
    config = {u.key: json.loads(u.value_json) for r in records if r.HasField("config") for u in r.config.update}
    config = {key: value for key, value in config.items() if not key.startswith("_")}  # W&B's own entries
    assert config == flatten(yaml.safe_load((run / "recipe.yaml").read_text()))
    # W&B splits a metric name at "/" into nested_key
    history = [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
               for r in records if r.HasField("history")]
    train, evals = logged(run)
    assert {h["_step"]: h["train/loss"] for h in history} == {step: r["loss"] for step, r in train.items()}
    assert {h["_step"]: h["eval/accuracy"] for h in history} == {step: r["accuracy"] for step, r in evals.items()}
    assert history[-1]["final/validation/accuracy"] == final["validation"]["accuracy"]
    (artifact,) = [r.artifact for r in records if r.HasField("artifact")]
    assert (artifact.name, artifact.type) == ("sentiment-model-card", "model-card")
    (entry,) = artifact.manifest.contents
    card = (run / "README.md").read_bytes()
    assert entry.path == "README.md" and entry.digest == base64.b64encode(hashlib.md5(card).digest()).decode()
    assert "exit" in kinds  # the run was finished (accelerator.end_training)


def test_mlflow_store_defaults_to_mlruns_beside_the_run_folder(tmp_path, monkeypatch):
    from adapt.tracking import mlflow_tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert mlflow_tracking_uri(tmp_path / "runs" / "sentiment") == f"file:{tmp_path / 'runs' / 'mlruns'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert mlflow_tracking_uri(tmp_path / "runs" / "sentiment") == "http://127.0.0.1:5000"
