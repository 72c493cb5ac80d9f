"""LoRA round trip on the embedded MiniLM (issue 15, acceptance 2): a 3-label sentiment/emotion classifier
(tweet_eval emotion: anger, joy, sadness) and a CoNLL-2003 NER tagger, each trained briefly with LoRA, then
reloaded four ways: `adapt predict`, `adapt eval --model`, `adapt export --merge` + plain transformers
(`pipeline` for classification; word-first-token argmax for NER, as adapt scores). Every way must give the
real label names and the same predictions as the run's predictions_validation.jsonl.

    .venv/bin/python benchmarks/lora_roundtrip.py [--workdir /tmp/lora_roundtrip] [--max-steps 30] [--lr 1e-3]

Prints one line per check, `matches/total`, and exits 1 if any differs."""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
EMOTIONS = {"0": "anger", "1": "joy", "3": "sadness"}  # tweet_eval emotion without "optimism": 3 labels
ADAPT = [sys.executable, "-m", "adapt"]


def adapt(*args: str) -> str:
    done = subprocess.run([*ADAPT, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"adapt {' '.join(args)} exited {done.returncode}: {done.stderr.strip()[-800:]}")
    return done.stdout


def emotion_csv(split: str, path: Path, limit: int) -> Path:
    folder = DATA / "tweet_eval" / "emotion"
    texts = (folder / f"{split}_text.txt").read_text(encoding="utf-8").splitlines()
    labels = (folder / f"{split}_labels.txt").read_text(encoding="utf-8").split()
    rows = [(t.strip(), EMOTIONS[y]) for t, y in zip(texts, labels) if y in EMOTIONS][:limit]
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("text", "label"))
        writer.writerows(rows)
    return path


def lr_flag(lr: float | None) -> list[str]:
    return ["--lr", str(lr)] if lr else []


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def ner_tags_with_transformers(folder: Path, sentences: list[list[str]]) -> list[list[str]]:
    """Word tags (each word's first sub-token, as adapt decodes, written as IOB2) from the merged checkpoint,
    without adapt."""
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForTokenClassification.from_pretrained(folder).eval()
    tagged = []
    for words in sentences:
        enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=128, return_tensors="pt")
        with torch.no_grad():
            ids = model(**enc).logits[0].argmax(-1).tolist()
        first: dict[int, int] = {}
        for position, word in enumerate(enc.word_ids()):
            if word is not None:
                first.setdefault(word, position)
        tagged.append(iob2([model.config.id2label[ids[first[i]]] if i in first else "O" for i in range(len(words))]))
    return tagged


def iob2(tags: list[str]) -> list[str]:
    """Raw per-word argmax tags as valid IOB2, as every entity decoder reads them (seqeval's default mode,
    conlleval): an I-X that does not continue an X entity starts one, so it is written B-X."""
    fixed = []
    for tag in tags:
        previous = fixed[-1] if fixed else "O"
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            tag = "B-" + tag[2:]
        fixed.append(tag)
    return fixed


def report(name: str, got: list, want: list) -> bool:
    same = sum(g == w for g, w in zip(got, want))
    ok = same == len(want) == len(got)
    print(f"{name:<44} {same}/{len(want)} {'ok' if ok else 'DIFFERENT'}")
    return ok


def classification(work: Path, steps: int, lr: float | None) -> bool:
    from transformers import pipeline

    train = emotion_csv("train", work / "emotion_train.csv", 1200)
    val = emotion_csv("val", work / "emotion_val.csv", 200)
    run = work / "emotion_lora"
    adapt("finetune", "--recipe", "sentiment", "--data", str(train), "--validation", str(val), "--test", "",
          "--max-steps", str(steps), "--output-dir", str(run), "--overwrite", "peft.method=lora",
          "data.label_names=null", "tracking=[]", *lr_flag(lr))
    rows = read_jsonl(run / "predictions_validation.jsonl")
    want = [r["prediction"] for r in rows]
    print(f"emotion LoRA: labels {json.loads((run / 'config.json').read_text())['id2label']}, "
          f"validation accuracy {json.loads((run / 'metrics.json').read_text())['validation']['accuracy']:.4f}")
    inputs = work / "emotion_inputs.txt"
    inputs.write_text("".join(r["text"].replace("\n", " ") + "\n" for r in rows), encoding="utf-8")
    predicted = [json.loads(line)["label"] for line in adapt("predict", "--model", str(run), "--file", str(inputs)).splitlines()]
    ok = report("emotion: adapt predict", predicted, want)
    out = work / "emotion_eval.json"
    adapt("eval", "--model", str(run), "--data", str(val), "--output", str(out), "--json")
    ok &= report("emotion: adapt eval --model", [r["prediction"] for r in json.loads(out.read_text())["examples"]], want)
    merged = work / "emotion_merged"
    adapt("export", "--model", str(run), "--output", str(merged), "--merge", "--overwrite")
    labels = [o["label"] for o in pipeline("text-classification", model=str(merged))([r["text"] for r in rows])]
    ok &= report("emotion: export --merge + transformers.pipeline", labels, want)
    return ok


def ner(work: Path, steps: int, lr: float | None) -> bool:
    from transformers import pipeline

    run = work / "ner_lora"
    adapt("finetune", "--recipe", "ner", "--max-steps", str(steps), "--output-dir", str(run), "--overwrite",
          "peft.method=lora", "data.max_train_examples=2000", "data.max_eval_examples=200", "data.test=null",
          "tracking=[]", *lr_flag(lr))
    rows = read_jsonl(run / "predictions_validation.jsonl")
    want = [r["prediction"] for r in rows]
    print(f"NER LoRA: {len(json.loads((run / 'config.json').read_text())['id2label'])} tags, validation F1 "
          f"{json.loads((run / 'metrics.json').read_text())['validation']['f1']:.4f}")
    inputs = work / "ner_inputs.txt"
    inputs.write_text("".join(" ".join(r["tokens"]) + "\n" for r in rows), encoding="utf-8")
    predicted = [json.loads(line)["tags"] for line in adapt("predict", "--model", str(run), "--file", str(inputs)).splitlines()]
    ok = report("NER: adapt predict", predicted, want)
    out = work / "ner_eval.json"
    adapt("eval", "--model", str(run), "--data", str(DATA / "conll2003" / "valid.txt"), "--output", str(out),
          "--json", "data.max_eval_examples=200")
    ok &= report("NER: adapt eval --model", [r["prediction"] for r in json.loads(out.read_text())["examples"]], want)
    merged = work / "ner_merged"
    adapt("export", "--model", str(run), "--output", str(merged), "--merge", "--overwrite")
    ok &= report("NER: export --merge + transformers", ner_tags_with_transformers(merged, [r["tokens"] for r in rows]), want)
    found = {e["entity"] for r in rows[:20] for e in pipeline("token-classification", model=str(merged))(" ".join(r["tokens"]))}
    names_ok = not any(name.startswith("LABEL_") for name in found)
    print(f"{'NER: pipeline entity names':<44} {sorted(found)} {'ok' if names_ok else 'DIFFERENT'}")
    return ok and names_ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/lora_roundtrip")
    parser.add_argument("--max-steps", type=int, default=30)
    parser.add_argument("--lr", type=float, help="peak learning rate (default: each recipe's)")
    parser.add_argument("--only", choices=["classification", "ner"])
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    ok = True
    if args.only in (None, "classification"):
        ok &= classification(work, args.max_steps, args.lr)
    if args.only in (None, "ner"):
        ok &= ner(work, args.max_steps, args.lr)
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
