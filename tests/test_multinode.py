"""Multi-node for real: examples/accelerate/multi_node.yaml as 2 "nodes" x 1 process on one machine (two
`accelerate launch` commands, machine_rank 0 and 1, rendezvous on 127.0.0.1). Training, evaluation that scores
each of an odd number of validation examples exactly once, and one output folder written once."""

from __future__ import annotations

import csv
import json
import subprocess

from distributed_helpers import JOB_TIMEOUT, cpu_config, env, free_port, launch


def test_two_nodes_train_evaluate_each_example_once_and_save_once(tiny_bert, sentiment_csv, tmp_path):
    from conftest import sentiment_rows, write_table

    validation = write_table(tmp_path / "validation.csv", sentiment_rows()[:5])  # odd: a padded copy would show
    out, cache = tmp_path / "run", tmp_path / "cache"
    args = ["finetune", "--model", str(tiny_bert), "--data", str(sentiment_csv), "--validation", str(validation),
            "--max-steps", "3", "--batch-size", "4", "--eval-steps", "2", "--save-steps", "2",
            "--output-dir", str(out), "tracking=[]", "train.mixed_precision=no"]
    port = free_port()
    nodes = [subprocess.Popen(launch(cpu_config("multi_node", tmp_path, num_processes=2, machine_rank=rank,
                                                main_process_ip="127.0.0.1", main_process_port=port), *args),
                              env=env(cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    results = [node.communicate(timeout=JOB_TIMEOUT) for node in nodes]
    for node, (_, stderr) in zip(nodes, results):
        assert node.returncode == 0, stderr[-4000:]

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["train_steps"] == 3
    rows = [json.loads(line) for line in (out / "predictions_validation.jsonl").read_text().splitlines()]
    with validation.open() as handle:
        expected = list(csv.DictReader(handle))
    assert sorted(r["text"] for r in rows) == sorted(r["text"] for r in expected)  # 5, none twice, none missing
    correct = sum(r["prediction"] == r["label"] for r in rows)
    assert metrics["validation"]["examples"] == 5 and metrics["validation"]["accuracy"] == correct / 5

    # written once, by the first node's process: one log line per event, no leftovers of a second writer
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    events = [(r["kind"], r["step"]) for r in log]
    assert len(events) == len(set(events)) and ("eval", 2) in events and ("eval", 3) in events
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best", "step-2", "step-3"]
    assert sorted(p.name for p in (out / "checkpoints" / "step-3").glob("rng-*.safetensors")) == [
        "rng-0.safetensors", "rng-1.safetensors"]
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(".")]  # no lock, swap or temp folder left
