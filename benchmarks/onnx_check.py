"""ONNX export check on real runs (issue 19, acceptance 1): short embedded-MiniLM runs of the sentiment, ner and qa
recipes (made here when missing, --max-steps 20), each exported with `adapt export RUN --format onnx`, then on
100 real inputs (SST-2 dev sentences, CoNLL-2003 dev sentences, SQuAD v1.1 dev questions):
- the labels / tags / answer spans of the exported graph on onnxruntime (through adapt's own task code:
  `adapt.export_onnx.load_exported` + `adapt.runner.predict_stream`) against `adapt predict` (PyTorch);
- the largest |logit| difference between onnxruntime and the plain PyTorch model on the same tokenized batches;
- latency per example at batch size 1, onnxruntime vs PyTorch (fp32, CPU, one thread each).

    nice -n 10 .venv/bin/python benchmarks/onnx_check.py [--workdir /tmp/onnx] [--max-steps 20] [--inputs 100]

Prints one line per recipe and exits 1 if a prediction differs or a logit difference reaches 1e-4."""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
ADAPT = [sys.executable, "-m", "adapt"]
TOLERANCE = 1e-4


def adapt(*args: str) -> str:
    done = subprocess.run([*ADAPT, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"adapt {' '.join(args)} exited {done.returncode}: {done.stderr.strip()[-800:]}")
    return done.stdout


def sentiment_inputs(n: int) -> list[str]:
    with (DATA / "sst2" / "dev.tsv").open(encoding="utf-8", newline="") as handle:
        return [row["sentence"] for row, _ in zip(csv.DictReader(handle, delimiter="\t"), range(n))]


def ner_inputs(n: int) -> list[str]:
    sentences, words = [], []
    for line in (DATA / "conll2003" / "valid.txt").read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("-DOCSTART-"):
            if words:
                sentences.append(" ".join(words))
                words = []
            if len(sentences) == n:
                break
            continue
        words.append(line.split()[0])
    return sentences[:n]


def qa_inputs(n: int) -> list[str]:
    articles = json.loads((DATA / "squad_v1" / "dev-v1.1.json").read_text(encoding="utf-8"))["data"]
    lines = [json.dumps({"id": qa["id"], "question": qa["question"], "context": paragraph["context"]})
             for article in articles for paragraph in article["paragraphs"] for qa in paragraph["qas"]]
    return lines[-n:]  # the last articles: the recipe's held-out share is chosen by title, these are mostly unseen


RECIPES = {"sentiment": sentiment_inputs, "ner": ner_inputs, "qa": qa_inputs}
OVERRIDES = {"sentiment": [], "ner": ["data.test=null"], "qa": []}


def key(task: str, record: dict):
    """What must agree between the two runtimes: the label, the word tags, the answer span."""
    if task == "classification":
        return record["label"]
    if task == "ner":
        return tuple(record["tags"])
    return record["answer"], record["start"], record["end"]


def variety(task: str, keys: list) -> str:
    """How varied the predictions are (agreement on a constant label would prove little)."""
    if task == "classification":
        return ", ".join(f"{label} {keys.count(label)}" for label in sorted(set(keys)))
    if task == "ner":
        return f"{sum(any(tag != 'O' for tag in tags) for tags in keys)} sentences with an entity"
    return f"{len(set(keys))} distinct spans"


def logit_difference_and_latency(run: Path, export: Path, lines: list[str]) -> tuple[float, float, float]:
    """(max |logit diff| over all batches of 16, ms per example PyTorch, ms per example onnxruntime at batch 1 with
    one thread each)."""
    import onnxruntime
    import torch

    from adapt import batching
    from adapt.export_onnx import output_difference, plain_model
    from adapt.runner import trained_task

    task = trained_task(str(run))
    task.load_tokenizer(str(run))
    model = plain_model(task, str(run))
    session = onnxruntime.InferenceSession(str(export / "model.onnx"), providers=["CPUExecutionProvider"])
    raw = task.inputs_from_texts(lines)
    features = task.featurize(raw, "predict")
    names = [i.name for i in session.get_inputs()]
    order = list(range(len(features)))
    worst = 0.0
    for batch in batching.iterate(features, [order[i:i + 16] for i in range(0, len(order), 16)], task.collate):
        worst = max(worst, output_difference(model, session, batch))
    timings = {"torch": 0.0, "onnxruntime": 0.0}
    # one thread each: on a shared CPU, thread pools sized to the machine measure the neighbours, not the runtime
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(export / "model.onnx"), options, providers=["CPUExecutionProvider"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    singles = list(batching.iterate(features, [[i] for i in order], task.collate))
    for batch in singles[:5]:  # warm-up
        session.run(None, {n: batch[n].numpy() for n in names})
        with torch.inference_mode():
            model(**{n: batch[n] for n in names})
    for batch in singles:
        begin = time.perf_counter()
        with torch.inference_mode():
            model(**{n: batch[n] for n in names})
        timings["torch"] += time.perf_counter() - begin
        begin = time.perf_counter()
        session.run(None, {n: batch[n].numpy() for n in names})
        timings["onnxruntime"] += time.perf_counter() - begin
    torch.set_num_threads(threads)
    per_example = {k: 1000 * v / len(lines) for k, v in timings.items()}
    return worst, per_example["torch"], per_example["onnxruntime"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/onnx")
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--inputs", type=int, default=100)
    parser.add_argument("--recipes", default="sentiment,ner,qa")
    parser.add_argument("--lr", type=float, default=None, help="learning rate of the runs made here (default: the "
                        "recipe's; 20 steps at it may leave a model predicting one label, which makes agreement easy)")
    args = parser.parse_args()
    work = Path(args.workdir)
    os.environ.setdefault("ADAPT_CACHE", str(work / "cache"))
    from adapt.export_onnx import load_exported
    from adapt.runner import load_trained, predict_stream

    failed = False
    for recipe in args.recipes.split(","):
        run, export = work / "runs" / recipe, work / "exports" / recipe
        if not (run / "config.json").exists():
            adapt("finetune", "--recipe", recipe, "--max-steps", str(args.max_steps), "--batch-size", "16",
                  *(["--lr", str(args.lr)] if args.lr else []),
                  "--output-dir", str(run), "--overwrite", "data.max_eval_examples=200", "tracking=[]",
                  *OVERRIDES[recipe])
        begin = time.perf_counter()
        printed = adapt("export", str(run), "--format", "onnx", "--output", str(export), "--overwrite")
        export_seconds = time.perf_counter() - begin
        at_export = next(line for line in printed.splitlines() if line.startswith("parity"))
        lines = RECIPES[recipe](args.inputs)
        task, model = load_trained(str(run))
        expected = [key(task.name, r) for r in predict_stream(task, model, lines, batch_size=16)]
        onnx_task, graph = load_exported(str(export))
        got = [key(onnx_task.name, r) for r in predict_stream(onnx_task, graph, lines, batch_size=16)]
        same = sum(a == b for a, b in zip(expected, got))
        worst, torch_ms, ort_ms = logit_difference_and_latency(run, export, lines)
        what = {"classification": "labels", "ner": "tag sequences", "qa": "answer spans"}[task.name]
        print(f"{recipe}: {same}/{len(lines)} {what} equal to `adapt predict` ({variety(task.name, expected)}); max |logit diff| {worst:.2e} on the "
              f"{len(lines)} inputs (export-time check: {at_export.split('max |diff| ')[1]}); latency per example "
              f"at batch 1, 1 thread: PyTorch {torch_ms:.2f} ms, onnxruntime {ort_ms:.2f} ms "
              f"({torch_ms / ort_ms:.2f}x); export {export_seconds:.0f} s", flush=True)
        failed |= same != len(lines) or not worst < TOLERANCE
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
