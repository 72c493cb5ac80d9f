"""The probes: one declarative entry each (files, command, expected outcome), grouped by the kinds A-G of
issue 15. Placeholders in commands: {adapt} the CLI, {py} the venv's python, {data} ../shared/data, and one
per tiny model of fixtures.py ({bert}, {llama}, {bart}, ...)."""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import lzma
import shutil
import sys
from pathlib import Path

from spec import Ctx, Custom, Either, Probe, Refuse, Succeed, one_error_line

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO / "tests"))
from conftest import sentiment_rows  # noqa: E402  (the 40 labelled reviews the tests use)

# ---- data ---------------------------------------------------------------------------------------------
SENT = sentiment_rows()  # 40 (text, positive|negative), labels interleaved
NEUTRAL = ["it is a film", "the film runs two hours", "a movie about a family", "shot in color",
           "released in spring", "the cast has five actors", "it has subtitles", "a sequel to the first one",
           "set in a small town", "the story takes a week", "filmed in canada", "a remake",
           "an adaptation of a novel", "in english", "the director's third film", "a period piece"]


def table(rows, header=("text", "label"), delimiter=",") -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


TRAIN = table(SENT[:32])  # 32 rows: 4 full batches of 8 per epoch
VAL = table(SENT[32:])  # 8 rows
VAL_TEXTS = "".join(t + "\n" for t, _ in SENT[32:])
THREE = [row for i in range(16) for row in ((SENT[2 * i][0], "positive"), (SENT[2 * i + 1][0], "negative"),
                                            (NEUTRAL[i], "neutral"))]
TRAIN3, VAL3 = table(THREE[:39]), table(THREE[39:] + [(SENT[34][0], "positive"), (SENT[35][0], "negative")])
VAL3_TEXTS = "".join(t + "\n" for t, _ in list(csv.reader(io.StringIO(VAL3)))[1:])


def conll_sentences(name: str, count: int, skip: int = 0) -> list[list[str]]:
    """The first `count` sentences (lists of `WORD POS CHUNK TAG` lines) of a shared CoNLL-2003 file."""
    sentences, current = [], []
    for line in (DATA / "conll2003" / name).read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("-DOCSTART-"):
            if current:
                sentences.append(current)
                current = []
            continue
        current.append(line)
    return sentences[skip:skip + count]


def conll(sentences: list[list[str]]) -> str:
    return "\n\n".join("\n".join(s) for s in sentences) + "\n"


NER_TRAIN = conll(conll_sentences("train.txt", 48))
NER_VAL_SENTENCES = conll_sentences("valid.txt", 12)
NER_VAL = conll(NER_VAL_SENTENCES)
NER_VAL_TEXTS = "".join(" ".join(line.split()[0] for line in s) + "\n" for s in NER_VAL_SENTENCES)


def iob1(sentences: list[list[str]]) -> list[list[str]]:
    """The same sentences re-tagged in IOB1: an entity starts with I- unless it follows one of its type."""
    out = []
    for sentence in sentences:
        lines, previous = [], "O"
        for line in sentence:
            *rest, tag = line.split()
            if tag.startswith("B-") and previous[2:] != tag[2:]:
                tag = "I-" + tag[2:]
            lines.append(" ".join([*rest, tag]))
            previous = tag
        out.append(lines)
    return out


SHAKESPEARE = (DATA / "tiny_shakespeare" / "input.txt").read_text(encoding="utf-8")[:6000]
S2S = [{"source": f"{t} and the audience agreed", "target": t} for t, _ in SENT]
S2S_TRAIN, S2S_VAL = jsonl(S2S[:30]), jsonl(S2S[30:36])


def short_qa() -> str:
    """40 one-sentence contexts of different lengths (so evaluation windows are padded), one answer each."""
    rows = []
    for i, (text, _) in enumerate(SENT):
        context, answer = f"{text}, wrote critic number {i} in a review.", f"critic number {i}"
        rows.append({"id": str(i), "title": f"review {i}", "question": "Who wrote the review?", "context": context,
                     "answers": {"text": [answer], "answer_start": [context.index(answer)]}})
    return jsonl(rows)


SHORT_QA = short_qa()


def compressed(compress, text: str, cut: float | None = None) -> bytes:
    """`text` compressed (gzip.compress, bz2.compress, ...), cut to its first `cut` share if given."""
    raw = compress(text.encode())
    return raw[: int(len(raw) * cut)] if cut else raw


# ---- commands --------------------------------------------------------------------------------------
QUICK = ["--output-dir", "out", "--batch-size", "8", "tracking=[]", "train.eval_batch_size=16"]


def ft(*args: str, model: str = "{bert}", steps: int = 2) -> list[str]:
    """`adapt finetune` of the tiny model for a couple of steps into ./out."""
    return ["{adapt}", "finetune", "--model", model, *QUICK, "--max-steps", str(steps), *args]


CLM = ("--recipe", "clm", "--batch-size", "4", "train.eval_batch_size=4", "task_options.block_size=32",
       "task_options.passage_chars=300", "task_options.max_new_tokens=4", "train.max_length=32")
S2S_ARGS = ("--recipe", "summarize", "--data", "s2s_train.jsonl", "--validation", "s2s_val.jsonl",
            "train.max_length=48", "task_options.max_target_length=12", "task_options.num_beams=1",
            "train.eval_batch_size=8", "data.test=null")
# log every 4 steps, checkpoint every step: resuming from step 3 needs the counters of steps 1-3 from the checkpoint
# (the data sit at a fixed path, so a copy of the shared run resumes on the very same files)
RESUMABLE = ("--data", "{resume_data}/train.csv", "--validation", "{resume_data}/val.csv", "--save-steps", "1",
             "train.log_steps=4")

# ---- shared runs (built once, copied into the probes that read or alter a finished run) ----------------
SHARED = {
    "cls": ({"train.csv": TRAIN, "val.csv": VAL}, ft("--data", "train.csv", "--validation", "val.csv", steps=2)),
    "lora2": ({"train.csv": TRAIN, "val.csv": VAL},
              ft("--data", "train.csv", "--validation", "val.csv", "peft.method=lora", "--lr", "1e-2", steps=2)),
    "lora3": ({"train.csv": TRAIN3, "val.csv": VAL3},
              ft("--data", "train.csv", "--validation", "val.csv", "peft.method=lora", "--lr", "1e-2",
                 "data.label_names=[negative,positive,neutral]", steps=3)),
    "lora_ner": ({"train.conll": NER_TRAIN, "val.conll": NER_VAL},
                 ft("--recipe", "ner", "--data", "train.conll", "--validation", "val.conll", "data.test=null",
                    "peft.method=lora", "--lr", "1e-2", steps=3)),
    "resumable": ({}, ft(*RESUMABLE, steps=4)),
    "bart": ({"s2s_train.jsonl": S2S_TRAIN, "s2s_val.jsonl": S2S_VAL}, ft(*S2S_ARGS, model="{bart}")),
    "bart_lora": ({"s2s_train.jsonl": S2S_TRAIN, "s2s_val.jsonl": S2S_VAL},
                  ft(*S2S_ARGS, "peft.method=lora", model="{bart}")),
}


def shared(name: str, dest: str = "out"):
    """Set-up step: a copy of a shared finished run at ./<dest> (plus its data files)."""
    def step(ctx: Ctx) -> None:
        files, argv = SHARED[name]
        source = ctx.fx.run(name, files, [a.format_map(ctx.fmt) for a in argv])
        shutil.copytree(source / "out", ctx.dir / dest)
        for rel in files:
            if not (ctx.dir / rel).exists():
                shutil.copy(source / rel, ctx.dir / rel)
    return step


# ---- checks ------------------------------------------------------------------------------------------
def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def metrics(ctx: Ctx, run: str = "out") -> dict:
    return json.loads((ctx.dir / run / "metrics.json").read_text())


def config(ctx: Ctx, run: str = "out") -> dict:
    return json.loads((ctx.dir / run / "config.json").read_text())


def find(value, key: str):
    """The first value of `key` anywhere in nested dicts/lists (None if absent)."""
    if isinstance(value, dict):
        if key in value:
            return value[key]
        value = list(value.values())
    if isinstance(value, list):
        for item in value:
            found = find(item, key)
            if found is not None:
                return found
    return None


SCORE_TOLERANCE = 1e-3  # bf16 training vs an fp32 reload


def max_gap(a: list, b: list) -> float:
    if len(a) != len(b) or any(x is None for x in a):
        return float("inf")
    return max((abs(x - y) for x, y in zip(a, b)), default=0.0)


def labels_match_validation(names: set[str], run: str = "out"):
    """`adapt predict` on the validation texts gives the run's own validation predictions, by name."""
    def check(ctx: Ctx):
        predicted = [r.get("label") for r in ctx.jsonl_out()]
        saved = [r["prediction"] for r in read_jsonl(ctx.dir / run / "predictions_validation.jsonl")]
        if not set(predicted) <= names:
            return False, f"labels {sorted(set(map(str, predicted)))} are not the real names {sorted(names)}"
        if predicted != saved:
            same = sum(a == b for a, b in zip(predicted, saved))
            return False, f"{same}/{len(saved)} predictions equal predictions_validation.jsonl"
        # the scores too: a head re-initialised on reload could still pick the same majority label
        gap = max_gap([r.get("score") for r in ctx.jsonl_out()],
                      [r["score"] for r in read_jsonl(ctx.dir / run / "predictions_validation.jsonl")])
        if gap > SCORE_TOLERANCE:
            return False, f"labels equal but scores differ by up to {gap:.3g}"
        return True, f"{len(saved)}/{len(saved)} equal (scores within {gap:.1e}), names {sorted(set(predicted))}"
    return check


def tags_match_validation(ctx: Ctx):
    predicted = [r.get("tags") for r in ctx.jsonl_out()]
    saved = [r["prediction"] for r in read_jsonl(ctx.out / "predictions_validation.jsonl")]
    if predicted != saved:
        same = sum(a == b for a, b in zip(predicted, saved))
        return False, f"{same}/{len(saved)} tag sequences equal predictions_validation.jsonl"
    return True, f"{len(saved)}/{len(saved)} tag sequences equal"


def eval_equals_saved_accuracy(ctx: Ctx):
    """`adapt eval --model` on the validation file reports the accuracy of the saved validation predictions."""
    rows = read_jsonl(ctx.out / "predictions_validation.jsonl")
    expected = sum(r["prediction"] == r["label"] for r in rows) / len(rows)
    got = find(ctx.json_out(), "accuracy")
    return (got is not None and abs(got - expected) < 1e-9), f"accuracy {got} (saved predictions: {expected})"


def eval_equals_saved_seqeval(ctx: Ctx):
    from seqeval.metrics import f1_score

    rows = read_jsonl(ctx.out / "predictions_validation.jsonl")
    expected = f1_score([r["tags"] for r in rows], [r["prediction"] for r in rows])
    got = find(ctx.json_out(), "f1")
    return (got is not None and abs(got - expected) < 1e-6), f"f1 {got} (seqeval default on saved: {expected:.6f})"


def merged_export_matches(names: set[str]):
    """The merged folder loads in plain transformers with the real label names and the same predictions."""
    def check(ctx: Ctx):
        from transformers import pipeline

        labels = set(config(ctx, "merged").get("id2label", {}).values())
        if labels != names:
            return False, f"merged config id2label {sorted(labels)} != {sorted(names)}"
        classify = pipeline("text-classification", model=str(ctx.dir / "merged"), device="cpu")
        rows = read_jsonl(ctx.out / "predictions_validation.jsonl")
        outputs = classify([r["text"] for r in rows])
        predicted, saved = [p["label"] for p in outputs], [r["prediction"] for r in rows]
        gap = max_gap([p["score"] for p in outputs], [r["score"] for r in rows])
        ok = predicted == saved and gap <= SCORE_TOLERANCE
        return ok, f"pipeline: {sum(a == b for a, b in zip(predicted, saved))}/{len(saved)} equal, scores within {gap:.1e}"
    return check


def score(metric: str, key: str, expected: float, tolerance: float = 1e-6):
    def check(ctx: Ctx):
        got = find((ctx.json_out() or {}).get("scores", {}).get(metric), key)
        return (got is not None and abs(got - expected) <= tolerance), f"{metric} {key} = {got} (right: {expected})"
    return check


def all_entities_match(entities: int):
    """F1 1.0 counted over every entity of the file (per-type supports add up), not only the valid-IOB2 ones."""
    def check(ctx: Ctx):
        scores = (ctx.json_out() or {}).get("scores", {}).get("seqeval", {})
        support = sum(v.get("support", 0) for v in scores.get("per_type", {}).values())
        ok = scores.get("f1") == 1.0 and support == entities
        return ok, f"f1 {scores.get('f1')} over {support} entities (the files hold {entities})"
    return check


def references_are_iob2(ctx: Ctx):
    """The reference tags the run recorded read as IOB2: no entity starts with I-."""
    starts = [t for r in read_jsonl(ctx.out / "predictions_validation.jsonl") for i, t in enumerate(r["tags"])
              if t.startswith("I-") and (i == 0 or r["tags"][i - 1][2:] != t[2:])]
    return not starts, "reference tags are IOB2" if not starts else f"{len(starts)} entities still start with I-"


def seqeval_default_of(references: list[list[str]], predictions: list[list[str]]):
    from seqeval.metrics import f1_score

    return score("seqeval", "f1", f1_score(references, predictions))


def id2label(expected: set[str]):
    def check(ctx: Ctx):
        got = set(config(ctx).get("id2label", {}).values())
        return got == expected, f"id2label {sorted(got)}"
    return check


def steps_and_samples(steps: int, samples: int):
    def check(ctx: Ctx):
        m = metrics(ctx)
        ok = m.get("train_steps") == steps and m.get("train_samples") == samples
        return ok, f"train_steps {m.get('train_steps')} (right {steps}), train_samples {m.get('train_samples')} (right {samples})"
    return check


def generation_config_saves(ctx: Ctx):
    """transformers itself accepts the saved generation config (validate + save_pretrained)."""
    import tempfile

    from transformers import GenerationConfig

    loaded = GenerationConfig.from_pretrained(ctx.out)
    loaded.validate(strict=True)
    with tempfile.TemporaryDirectory() as tmp:
        loaded.save_pretrained(tmp)
    return True, f"valid: do_sample={loaded.do_sample} temperature={loaded.temperature} num_beams={loaded.num_beams}"


def eos_ids(expected: list[int]):
    def check(ctx: Ctx):
        got = json.loads((ctx.out / "generation_config.json").read_text()).get("eos_token_id")
        return got == expected, f"eos_token_id {got} (checkpoint: {expected})"
    return check


def word_keeps_space(ctx: Ctx):
    """The saved tokenizer reads a pre-split word as a word after a space (`Ġlives`), as in running text."""
    from transformers import AutoTokenizer

    tokens = AutoTokenizer.from_pretrained(ctx.out)(["lives"], is_split_into_words=True).tokens()
    return "Ġlives" in tokens, f"'lives' -> {tokens}"


def lora_targets(ctx: Ctx):
    targets = json.loads((ctx.out / "adapter_config.json").read_text()).get("target_modules")
    return bool(targets), f"target_modules {targets}"


def validation_count(limit: int, allowed_test: int | None):
    def check(ctx: Ctx):
        m = metrics(ctx)
        val = m.get("validation", {}).get("examples")
        test = m.get("test", {}).get("examples") if "test" in m else None
        ok = val is not None and val <= limit and (test is None or (allowed_test is not None and test <= allowed_test))
        return ok, f"validation examples {val} (own data: <= {limit}), test examples {test}"
    return check


def no_marker(ctx: Ctx):
    ran = (ctx.dir / "REMOTE_CODE_RAN").exists()
    code = ctx.result.code
    clean = code == 0 or (code == 2 and one_error_line(ctx.result)[0])
    return (not ran and clean), ("the folder's own Python code RAN" if ran else f"no remote code ran; exit {code}")


def file_modes(ctx: Ctx):
    private = [str(p.relative_to(ctx.out)) for p in ctx.out.rglob("*") if p.is_file() and (p.stat().st_mode & 0o044) != 0o044]
    return not private, f"{len(private)} files unreadable by group/others: {', '.join(private[:3])}" if private else "all files 0644-style"


def no_leftovers(ctx: Ctx):
    left = [str(p.relative_to(ctx.out)) for p in ctx.out.rglob(".tmp*")]
    return not left, f"left over: {', '.join(left)}" if left else "no .tmp* folders"


def interrupted_with_checkpoint(ctx: Ctx):
    states = list((ctx.out / "checkpoints").glob("step-*/trainer_state.json"))
    code = ctx.result.code
    ok = code in (130, 143) and bool(states) and "resume" in ctx.result.stderr.lower()
    return ok, f"exit {code}, {len(states)} checkpoint(s), resume hint {'yes' if 'resume' in ctx.result.stderr.lower() else 'no'}"


def signal_probe(name: str, signal: str, what: str, expected: str) -> Probe:
    """Send `signal` to a training run once its first log line exists; it must checkpoint and say how to resume."""
    return Probe(name, "D", what,
                 ["set -m; {adapt} finetune --model {bert} --output-dir out --batch-size 8 tracking=[] --max-steps 400 "
                  "--data train.csv train.log_steps=1 & p=$!; for i in $(seq 600); do [ -s out/train_log.jsonl ] && "
                  f"break; sleep 0.1; done; kill -{signal} $p; wait $p"],
                 Custom(interrupted_with_checkpoint, expected), files={"train.csv": TRAIN}, shell=True)


def one_run_locked_out(ctx: Ctx):
    codes = sorted(int(c) for c in ctx.result.stdout.split()[-2:])
    errors = (ctx.dir / "a.err").read_text() + (ctx.dir / "b.err").read_text()
    locked = any(w in errors.lower() for w in ("lock", "another", "in use", "already running", "busy"))
    return codes == [0, 2] and locked, f"exit codes {codes}; lock message {'yes' if locked else 'no'}"


def inputs_parsed(ctx: Ctx):
    """Every echoed input is the text (or a row holding it), never the raw JSON line read as text."""
    rows = ctx.jsonl_out()
    values = [r.get("input") for r in rows]
    texts = [v for value in values for v in (value.values() if isinstance(value, dict) else [value])]
    raw = [t for t in texts if isinstance(t, str) and t.lstrip().startswith("{")]
    return bool(rows) and not raw, f"inputs read as {values[:1]}"


# ---- set-up steps ----------------------------------------------------------------------------------------
def drop_newest_checkpoint(ctx: Ctx) -> None:
    newest = max((ctx.out / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    shutil.rmtree(newest)


def corrupt_newest_checkpoint(ctx: Ctx) -> None:
    newest = max((ctx.out / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    biggest = max((p for p in newest.iterdir() if p.is_file()), key=lambda p: p.stat().st_size)
    biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])


def stale_temp_folders(ctx: Ctx) -> None:
    drop_newest_checkpoint(ctx)
    (ctx.out / ".tmp-.final-dead").mkdir()
    (ctx.out / ".tmp-.final-dead" / "model.safetensors").write_bytes(b"\0" * 100_000)
    (ctx.out / "checkpoints" / ".tmp-step-9").mkdir()


def died_before_first_checkpoint(ctx: Ctx) -> None:
    shared("cls", "done")(ctx)
    ctx.out.mkdir()
    for name in ("recipe.yaml", "train_log.jsonl"):
        shutil.copy(ctx.dir / "done" / name, ctx.out / name)
    shutil.rmtree(ctx.dir / "done")


def adapter_as_pickle(ctx: Ctx) -> None:
    import torch
    from safetensors.torch import load_file

    shared("lora2")(ctx)
    tensors = load_file(str(ctx.out / "adapter_model.safetensors"))
    torch.save(tensors, ctx.out / "adapter_model.bin")
    (ctx.out / "adapter_model.safetensors").unlink()


def remote_code_in_run(ctx: Ctx) -> None:
    """A finished run whose recipe.yaml says trust_remote_code and whose config maps to shipped code."""
    from fixtures import REMOTE_CODE

    shared("cls")(ctx)
    cfg = config(ctx)
    cfg["auto_map"] = {"AutoConfig": "modeling_probe.ProbeConfig",
                       "AutoModelForSequenceClassification": "modeling_probe.ProbeModel"}
    (ctx.out / "config.json").write_text(json.dumps(cfg, indent=2))
    (ctx.out / "modeling_probe.py").write_text(REMOTE_CODE.replace("BertModel", "BertForSequenceClassification"))
    recipe = (ctx.out / "recipe.yaml").read_text()
    (ctx.out / "recipe.yaml").write_text(recipe.replace("trust_remote_code: false", "trust_remote_code: true"))


def parquet_with_nan_label(ctx: Ctx) -> None:
    import pandas as pd

    labels = [float(i % 2) if i != 5 else float("nan") for i in range(len(SENT))]
    pd.DataFrame({"text": [t for t, _ in SENT], "label": labels}).to_parquet(ctx.dir / "d.parquet")


def not_a_run(ctx: Ctx) -> None:
    ctx.out.mkdir()
    (ctx.out / "thesis.tex").write_text("\\documentclass{article} four years of work\n")
    (ctx.out / "figures").mkdir()
    (ctx.out / "figures" / "plot.pdf").write_bytes(b"%PDF-1.4 ...")


def write_resume_data(folder: Path) -> None:
    (folder / "train.csv").write_text(TRAIN)
    (folder / "val.csv").write_text(VAL)


BUILDERS = {"resume_data": write_resume_data}  # fixture folders that hold data rather than a model


# ---- the probes -------------------------------------------------------------------------------------------
IOB1_REF = [["I-PER", "I-PER", "O", "I-LOC"], ["O", "I-ORG", "I-ORG", "B-ORG", "O"], ["I-MISC", "O"]]
LENIENT_REF = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG", "I-ORG", "O"]]
LENIENT_PRED = [["I-PER", "I-PER", "O", "B-LOC"], ["O", "I-ORG", "I-ORG", "O"]]
BIOES_REF = [["S-PER", "O", "B-ORG", "E-ORG"], ["B-LOC", "I-LOC", "E-LOC", "O", "S-MISC"]]


def tags_file(sentences: list[list[str]]) -> str:
    return "".join(" ".join(s) + "\n" for s in sentences)


CHINESE = "今天天气很好，我们去公园散步。\n他在北京大学学习计算机科学。\n这本书非常有意思，我已经读了三遍。\n"
JAPANESE = "今日はとても良い天気です。\n私は東京大学でコンピュータ科学を勉強しています。\n"
ENGLISH = "the cat sat on the mat today .\na quick brown fox jumps over the lazy dog .\n"
QUOTED_NEWLINE = ('text,label\ngreat film,positive\n"a story\nin three\nlines",negative\nloved it,positive\n'
                  'bad,negative,extra\n')
SEMICOLON = "text;label\ngreat film;positive\nawful, truly awful;negative\nloved it;positive\n"
PIPE = "text|label\ngreat film|positive\nawful, truly awful|negative\nloved it|positive\n"
TABS_AS_CSV = "text\tlabel\ngreat film\tpositive\nawful, truly awful\tnegative\nloved it\tpositive\n"
FLOATS = [(t, f"{(i * 0.37) % 5:.2f}") for i, (t, _) in enumerate(SENT)]
MIXED_ONE = [(t, ["1", "1.0", "0", "0.0"][i % 4]) for i, (t, _) in enumerate(SENT)]
PTB = "".join(f"{t} .\n" for t, _ in SENT) * 3

PROBES: list[Probe] = [
    # ---- A: silent wrong results ----
    Probe("lora3_predict_names", "A", "3-label LoRA classifier: predict reloads the adapter with its head",
          ["{adapt}", "predict", "--model", "out", "--file", "val.txt"],
          Succeed(labels_match_validation({"positive", "negative", "neutral"}), "exit 0, = predictions_validation, real names"),
          files={"val.txt": VAL3_TEXTS}, setup=shared("lora3")),
    Probe("lora3_eval_model", "A", "3-label LoRA classifier: eval --model on its validation file",
          ["{adapt}", "eval", "--model", "out", "--data", "val.csv", "--json"],
          Succeed(eval_equals_saved_accuracy, "exit 0, accuracy = saved predictions'"), setup=shared("lora3")),
    Probe("lora3_export_merge", "A", "3-label LoRA classifier: export --merge, then plain transformers.pipeline",
          ["{adapt}", "export", "--model", "out", "--output", "merged", "--merge"],
          Succeed(merged_export_matches({"positive", "negative", "neutral"}), "exit 0, id2label + same predictions"),
          setup=shared("lora3")),
    Probe("lora2_predict_names", "A", "2-label LoRA classifier predicts LABEL_0 instead of the names",
          ["{adapt}", "predict", "--model", "out", "--file", "val.txt"],
          Succeed(labels_match_validation({"positive", "negative"}), "exit 0, = predictions_validation, real names"),
          files={"val.txt": VAL_TEXTS}, setup=shared("lora2")),
    Probe("lora2_export_merge", "A", "2-label LoRA: merged export's config keeps id2label",
          ["{adapt}", "export", "--model", "out", "--output", "merged", "--merge"],
          Succeed(merged_export_matches({"positive", "negative"}), "exit 0, id2label + same predictions"),
          setup=shared("lora2")),
    Probe("lora_ner_predict", "A", "LoRA NER on CoNLL lines: predict reloads with the tag head",
          ["{adapt}", "predict", "--model", "out", "--file", "val.txt"],
          Succeed(tags_match_validation, "exit 0, tags = predictions_validation"),
          files={"val.txt": NER_VAL_TEXTS}, setup=shared("lora_ner")),
    Probe("lora_ner_eval_model", "A", "LoRA NER: eval --model on its validation file",
          ["{adapt}", "eval", "--model", "out", "--data", "val.conll", "--json"],
          Succeed(eval_equals_saved_seqeval, "exit 0, f1 = seqeval on saved predictions"), setup=shared("lora_ner")),
    Probe("iob1_identical_files", "A", "identical IOB1 tag files (entities start with I-)",
          ["{adapt}", "eval", "--metric", "seqeval", "-p", "tags.txt", "-r", "tags.txt", "--json"],
          Succeed(all_entities_match(5), "exit 0, f1 1.0 over all 5 entities"), files={"tags.txt": tags_file(IOB1_REF)}),
    Probe("bioes_identical_files", "A", "identical BIOES tag files",
          ["{adapt}", "eval", "--metric", "seqeval", "-p", "tags.txt", "-r", "tags.txt", "--json"],
          Either(Succeed(all_entities_match(4), "exit 0, f1 1.0 over all 4 entities"), Refuse(("tags.txt",))),
          files={"tags.txt": tags_file(BIOES_REF)}),
    Probe("seqeval_default_mode", "A", "I- starting entities: headline F1 must equal seqeval's default mode",
          ["{adapt}", "eval", "--metric", "seqeval", "-p", "pred.txt", "-r", "ref.txt", "--json"],
          Succeed(seqeval_default_of(LENIENT_REF, LENIENT_PRED), "exit 0, f1 = seqeval.f1_score (1.0)"),
          files={"pred.txt": tags_file(LENIENT_PRED), "ref.txt": tags_file(LENIENT_REF)}),
    Probe("iob1_conll_finetune", "A", "NER trained on an IOB1 CoNLL file: converted to IOB2 or refused",
          ft("--recipe", "ner", "--data", "train.conll", "--validation", "val.conll", "data.test=null"),
          Either(Succeed(references_are_iob2, "exit 0, read as IOB2"), Refuse(("train.conll", "val.conll"))),
          files={"train.conll": conll(iob1(conll_sentences("train.txt", 48))),
                 "val.conll": conll(iob1(NER_VAL_SENTENCES))}),
    Probe("float_scores_as_labels", "A", "scores 0.00-4.99 as the label column (a regression dataset)",
          ft("--data", "scores.csv"),
          Either(Succeed(lambda ctx: (config(ctx).get("problem_type") == "regression" or config(ctx).get("num_labels") == 1,
                                      f"problem_type {config(ctx).get('problem_type')}, {len(config(ctx).get('id2label', {}))} labels"),
                         "exit 0 as regression"), Refuse(("scores.csv",), ("regression", "continuous"))),
          files={"scores.csv": table(FLOATS)}),
    Probe("empty_label_cell", "A", "a CSV row with an empty label cell",
          ft("--data", "d.csv"), Refuse(("d.csv",), ("line 4",)),
          files={"d.csv": table(SENT[:2] + [("fine film", "")] + SENT[2:20])}),
    Probe("empty_text_cell", "A", "a CSV row with an empty text cell",
          ft("--data", "d.csv"), Refuse(("d.csv",), ("line 3",)),
          files={"d.csv": table(SENT[:1] + [("", "positive")] + SENT[1:20])}),
    Probe("null_label_jsonl", "A", "a JSONL example with \"label\": null",
          ft("--data", "d.jsonl"), Refuse(("d.jsonl",), ("line 3",)),
          files={"d.jsonl": jsonl([{"text": t, "label": l} for t, l in SENT[:2]] + [{"text": "ok", "label": None}]
                                  + [{"text": t, "label": l} for t, l in SENT[2:20]])}),
    Probe("nan_label_parquet", "A", "a Parquet file whose float label column holds a NaN",
          ft("--data", "d.parquet"), Refuse(("d.parquet",)),
          setup=parquet_with_nan_label),
    Probe("labels_1_and_1.0", "A", "labels written 1, 1.0, 0, 0.0: two classes, not four",
          ft("--data", "d.csv"), Succeed(id2label({"negative", "positive"}), "exit 0, 2 classes"),
          files={"d.csv": table(MIXED_ONE)}),
    Probe("float_ids_jsonl", "A", "JSONL labels as numbers 0.0/1.0 are ids 0/1",
          ft("--data", "d.jsonl"), Succeed(id2label({"negative", "positive"}), "exit 0, 2 classes"),
          files={"d.jsonl": jsonl([{"text": t, "label": float(l == "positive")} for t, l in SENT])}),
    Probe("lr_inf", "A", "train.lr=.inf (trains to NaN weights, saved with exit 0)",
          ft("--data", "train.csv", "train.lr=.inf"), Refuse(("lr",)), files={"train.csv": TRAIN}),
    Probe("loss_diverges", "A", "lr 1e30: the loss becomes NaN/inf during training",
          ft("--data", "train.csv", "train.lr=1e30", "train.max_grad_norm=null", steps=4),
          Refuse(("nan", "finite", "inf", "diverg"), written="no-final-model"), files={"train.csv": TRAIN}),
    Probe("conll_3_of_4_columns", "A", "CoNLL lines with 3 of 4 columns (chunk tag read as entity tag)",
          ft("--recipe", "ner", "--data", "train.conll", "data.test=null", "data.validation=null"),
          Refuse(("train.conll",), ("line 5",)),
          files={"train.conll": "EU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\nPeter NNP B-NP B-PER\nBlackburn NNP I-NP\n\n"
                 + NER_TRAIN}),
    Probe("resume_changed_lr", "A", "--resume with a changed --lr",
          ft(*RESUMABLE, "--resume", "--lr", "3e-3", steps=4), Refuse(("lr",)),
          before=[shared("resumable"), drop_newest_checkpoint]),
    Probe("resume_changed_batch_size", "A", "--resume with a changed --batch-size",
          ft(*RESUMABLE, "--resume", steps=4) + ["--batch-size", "4"], Refuse(("batch",)),
          before=[shared("resumable"), drop_newest_checkpoint]),
    Probe("resume_changed_data", "A", "--resume with different --data",
          ft(*RESUMABLE, "--resume", steps=4) + ["--data", "other.csv"], Refuse(("data",)),
          files={"other.csv": table(list(reversed(SENT[:32])))}, before=[shared("resumable"), drop_newest_checkpoint]),
    Probe("resume_same_counts", "A", "--resume with the same command: same steps, samples counted across the checkpoint",
          ft(*RESUMABLE, "--resume", steps=4), Succeed(steps_and_samples(4, 32), "exit 0, 4 steps, 32 samples"),
          before=[shared("resumable"), drop_newest_checkpoint]),
    Probe("bleu_identical_chinese", "A", "BLEU of identical Chinese files (no spaces)",
          ["{adapt}", "eval", "--metric", "bleu", "-p", "zh.txt", "-r", "zh.txt", "--json"],
          Either(Succeed(score("bleu", "bleu", 100.0, 1e-6), "exit 0, BLEU 100"), Refuse(("tokeniz",))),
          files={"zh.txt": CHINESE}),
    Probe("bleu_chinese_tokenize_zh", "A", "BLEU of identical Chinese files with --tokenize zh",
          ["{adapt}", "eval", "--metric", "bleu", "--tokenize", "zh", "-p", "zh.txt", "-r", "zh.txt", "--json"],
          Succeed(score("bleu", "bleu", 100.0, 1e-6), "exit 0, BLEU 100"), files={"zh.txt": CHINESE}),
    Probe("bleu_identical_japanese", "A", "BLEU of identical Japanese files",
          ["{adapt}", "eval", "--metric", "bleu", "-p", "ja.txt", "-r", "ja.txt", "--json"],
          Either(Succeed(score("bleu", "bleu", 100.0, 1e-6), "exit 0, BLEU 100"), Refuse(("tokeniz",))),
          files={"ja.txt": JAPANESE}),
    Probe("bleu_identical_english", "A", "control: BLEU of identical English files",
          ["{adapt}", "eval", "--metric", "bleu", "-p", "en.txt", "-r", "en.txt", "--json"],
          Succeed(score("bleu", "bleu", 100.0, 1e-6), "exit 0, BLEU 100"), files={"en.txt": ENGLISH}),

    # ---- B: tracebacks instead of one clear line ----
    Probe("mixed_int_str_labels", "B", "JSONL labels mixing 1 and \"positive\"",
          ft("--data", "d.jsonl"), Refuse(("d.jsonl",)),
          files={"d.jsonl": jsonl([{"text": t, "label": (1 if i % 3 == 0 else l)} for i, (t, l) in enumerate(SENT)])}),
    Probe("csv_field_over_131072", "B", "a CSV text field of 200,000 characters",
          ft("--data", "d.csv", "--max-steps", "1"), Either(Succeed(None, "exit 0 (a long field is valid CSV)"), Refuse(("d.csv",))),
          files={"d.csv": table([("word " * 40_000, "positive")] + SENT)}),
    Probe("truncated_gz", "B", "a truncated .csv.gz", ft("--data", "d.csv.gz"), Refuse(("d.csv.gz",)),
          files={"d.csv.gz": compressed(gzip.compress, TRAIN * 20, 0.5)}),
    Probe("truncated_bz2", "B", "a truncated .csv.bz2", ft("--data", "d.csv.bz2"), Refuse(("d.csv.bz2",)),
          files={"d.csv.bz2": compressed(bz2.compress, TRAIN * 20, 0.5)}),
    Probe("truncated_xz", "B", "a truncated .jsonl.xz", ft("--data", "d.jsonl.xz"), Refuse(("d.jsonl.xz",)),
          files={"d.jsonl.xz": compressed(lzma.compress, jsonl([{"text": t, "label": l} for t, l in SENT]) * 20, 0.5)}),
    Probe("gz_not_gzip", "B", "a plain CSV named .csv.gz", ft("--data", "d.csv.gz"), Refuse(("d.csv.gz",)),
          files={"d.csv.gz": TRAIN}),
    Probe("zstd_compression", "B", "a .csv.zst (unsupported compression)", ft("--data", "d.csv.zst"),
          Refuse(("d.csv.zst",)), files={"d.csv.zst": b"(\xb5/\xfd\x00Xabc"}),
    Probe("duplicated_header", "B", "a CSV header naming `text` twice", ft("--data", "d.csv"),
          Refuse(("d.csv",), ("text",)), files={"d.csv": table([(t, t, l) for t, l in SENT], ("text", "text", "label"))}),
    Probe("fake_parquet", "B", "a CSV file named .parquet", ft("--data", "d.parquet"), Refuse(("d.parquet",)),
          files={"d.parquet": TRAIN}),
    Probe("json_list_of_numbers", "B", "a .json file holding [1, 2, 3]", ft("--data", "d.json"),
          Refuse(("d.json",)), files={"d.json": "[1, 2, 3]\n"}),
    Probe("json_list_of_strings", "B", "a .json file holding a list of strings", ft("--data", "d.json"),
          Refuse(("d.json",)), files={"d.json": json.dumps([t for t, _ in SENT])}),
    Probe("utf16_csv", "B", "a UTF-16 CSV (other encoding)", ft("--data", "d.csv"), Refuse(("d.csv",)),
          files={"d.csv": TRAIN.encode("utf-16")}),
    Probe("latin1_csv", "B", "a Latin-1 CSV with an accented word", ft("--data", "d.csv"), Refuse(("d.csv",), ("line 3",)),
          files={"d.csv": ("text,label\ngreat,positive\nun film affreux et très mauvais,negative\n").encode("latin-1")}),
    Probe("recipe_is_directory", "B", "--recipe naming a directory (my_recipe.yaml/)", ft("--recipe", "my_recipe.yaml"),
          Refuse(("my_recipe.yaml",)), setup=lambda ctx: (ctx.dir / "my_recipe.yaml").mkdir()),
    Probe("recipe_not_utf8", "B", "a recipe YAML in Latin-1", ft("--recipe", "r.yaml"), Refuse(("r.yaml",)),
          files={"r.yaml": "description: critiques de films très courtes\ntask: classification\nmodel: x\n".encode("latin-1")}),
    Probe("recipe_bad_yaml", "B", "a recipe YAML that does not parse", ft("--recipe", "r.yaml"), Refuse(("r.yaml",)),
          files={"r.yaml": "task: [classification\nmodel: x\n"}),
    Probe("max_length_over_positions", "B", "train.max_length 128 on a model with 64 positions",
          ft("--data", "train.csv", model="{bert64}"), Refuse(("max_length",)), files={"train.csv": TRAIN}),
    Probe("block_size_over_positions", "B", "clm block_size 256 on a Llama with 64 positions",
          ft(*CLM, "--data", "text.txt", "task_options.block_size=256", model="{llama}"),
          Refuse(("block_size",)), files={"text.txt": SHAKESPEARE}),
    Probe("summarize_default_length_on_bart", "B", "summarize recipe's max_length 384 on a BART with 128 positions",
          ft("--recipe", "summarize", "--data", "s2s_train.jsonl", "--validation", "s2s_val.jsonl", "data.test=null",
             model="{bart}"), Refuse(("max_length",)), files={"s2s_train.jsonl": S2S_TRAIN, "s2s_val.jsonl": S2S_VAL}),
    Probe("perplexity_max_length_over_positions", "B", "eval --metric perplexity --max-length 1024 on 64 positions",
          ["{adapt}", "eval", "--metric", "perplexity", "--model", "{gpt2}", "--text-file", "t.txt"],
          Refuse(("max-length", "max_length")), files={"t.txt": SHAKESPEARE}),
    Probe("lora_targets_match_nothing", "B", "peft.target_modules that match no layer",
          ft("--data", "train.csv", "peft.method=lora", "peft.target_modules=[no_such_layer]"),
          Refuse(("target_modules",)), files={"train.csv": TRAIN}),
    Probe("model_without_safetensors", "B", "a model folder with only pytorch_model.bin",
          ft("--data", "train.csv", model="{bert_bin}"), Refuse(("safetensors",)), files={"train.csv": TRAIN}),
    Probe("model_needs_remote_code", "B", "a model type defined only by code shipped in the folder",
          ft("--data", "train.csv", model="{remote_code}"),
          Custom(lambda ctx: (ctx.result.code == 2 and one_error_line(ctx.result)[0] and not ctx.out.exists()
                              and not (ctx.dir / "REMOTE_CODE_RAN").exists(),
                              f"exit {ctx.result.code}, code ran: {(ctx.dir / 'REMOTE_CODE_RAN').exists()}"),
                 "exit 2 + one line, no code run"), files={"train.csv": TRAIN}),
    Probe("model_folder_missing", "B", "--model ./no_such_model", ft("--data", "train.csv", model="./no_such_model"),
          Refuse(("no_such_model",)), files={"train.csv": TRAIN}),
    Probe("model_config_corrupt", "B", "a model folder whose config.json is not JSON",
          ft("--data", "train.csv", model="broken_model"), Refuse(("broken_model",)),
          files={"train.csv": TRAIN, "broken_model/config.json": "{\"model_type\": \"bert\", "}),
    Probe("predict_file_missing", "B", "predict --file that does not exist",
          ["{adapt}", "predict", "--model", "out", "--file", "missing.txt"], Refuse(("missing.txt",)),
          setup=shared("cls")),
    Probe("null_completion", "B", "prompt/completion JSONL with a null completion",
          ft(*CLM, "--data", "pc.jsonl", model="{llama}"), Refuse(("pc.jsonl",), ("line 3",)),
          files={"pc.jsonl": jsonl([{"prompt": f"Q{i}?", "completion": f"A{i}."} for i in range(2)]
                                   + [{"prompt": "Q?", "completion": None}]
                                   + [{"prompt": f"q{i}?", "completion": f"a{i}."} for i in range(20)])}),
    Probe("output_dir_unwritable", "B", "--output-dir under /proc (cannot be created, even by root)",
          ft("--data", "train.csv") + ["--output-dir", "/proc/adapt-probe/out"], Refuse(("/proc/adapt-probe",)),
          files={"train.csv": TRAIN}),
    Probe("output_dir_under_a_file", "B", "--output-dir whose parent is a regular file",
          ft("--data", "train.csv") + ["--output-dir", "afile/out"], Refuse(("afile",)),
          files={"train.csv": TRAIN, "afile": "not a folder\n"}),
    Probe("resume_corrupt_newest_checkpoint", "B", "--resume when the newest checkpoint is truncated",
          ft(*RESUMABLE, "--resume", steps=4),
          Either(Succeed(steps_and_samples(4, 32), "exit 0 from the older checkpoint"), Refuse(("step-4",))),
          before=[shared("resumable"), corrupt_newest_checkpoint]),

    # ---- C: checks after the output folder was touched ----
    Probe("metric_for_best_unknown", "C", "train.metric_for_best=bleu for a classifier",
          ft("--data", "train.csv", "train.metric_for_best=bleu"), Refuse(("metric_for_best",)),
          files={"train.csv": TRAIN}),
    Probe("peft_method_unknown", "C", "peft.method=nonsense", ft("--data", "train.csv", "peft.method=nonsense"),
          Refuse(("peft.method",)), files={"train.csv": TRAIN}),
    Probe("max_length_over_512", "C", "train.max_length=1024 on a BERT with 512 positions",
          ft("--data", "train.csv", "train.max_length=1024"), Refuse(("max_length",)), files={"train.csv": TRAIN}),
    Probe("test_label_unseen", "C", "a --test file with a label never seen in train",
          ft("--data", "train.csv", "--test", "test.csv"), Refuse(("test.csv",), ("neutral",)),
          files={"train.csv": TRAIN, "test.csv": table([("fine", "positive"), ("meh", "neutral")])}),
    Probe("task_option_unknown", "C", "task_options.bogus=1", ft("--data", "train.csv", "task_options.bogus=1"),
          Refuse(("bogus",)), files={"train.csv": TRAIN}),
    Probe("output_dir_is_a_file", "C", "--output-dir naming an existing file",
          ft("--data", "train.csv") + ["--output-dir", "afile"], Refuse(("afile",)),
          files={"train.csv": TRAIN, "afile": "precious\n"}),
    Probe("inspect_null_label", "C", "data inspect on JSONL with a null label (same validation as finetune)",
          ["{adapt}", "data", "inspect", "--model", "{bert}", "--data", "d.jsonl"], Refuse(("d.jsonl",), ("line 2",)),
          files={"d.jsonl": jsonl([{"text": "a", "label": "positive"}, {"text": "b", "label": None}]
                                  + [{"text": t, "label": l} for t, l in SENT])}),

    # ---- D: unsafe or destructive ----
    Probe("remote_code_via_run_recipe", "D", "predict on a run whose recipe.yaml says trust_remote_code: true",
          ["{adapt}", "predict", "--model", "out", "great film"],
          Custom(no_marker, "shipped code never runs; exit 0 or one-line exit 2"), setup=remote_code_in_run),
    Probe("remote_code_via_run_recipe_eval", "D", "eval --model on the same run",
          ["{adapt}", "eval", "--model", "out", "--data", "val.csv"],
          Custom(no_marker, "shipped code never runs; exit 0 or one-line exit 2"), setup=remote_code_in_run),
    Probe("adapter_bin_pickle", "D", "an adapter saved only as adapter_model.bin (pickle)",
          ["{adapt}", "predict", "--model", "out", "great film"], Refuse(("adapter_model.bin",)),
          setup=adapter_as_pickle),
    Probe("overwrite_not_a_run", "D", "--overwrite on a folder that is not an adapt run",
          ft("--data", "train.csv", "--overwrite"), Refuse(), files={"train.csv": TRAIN}, setup=not_a_run),
    Probe("overwrite_bad_data_keeps_run", "D", "--overwrite with bad data: the old run stays",
          ft("--data", "bad.csv", "--overwrite"), Refuse(("bad.csv",)),
          files={"bad.csv": table(SENT, ("sentence", "label"))}, setup=shared("cls")),
    Probe("overwrite_failed_run_keeps_old", "D", "--overwrite whose new run fails mid-training (NaN)",
          ft("--data", "train.csv", "--overwrite", "train.lr=1e30", "train.max_grad_norm=null", steps=4),
          Refuse(("nan", "finite", "inf", "diverg")), setup=shared("cls")),
    Probe("concurrent_runs_lock", "D", "two finetunes on one --output-dir at once",
          ["{adapt} finetune --model {bert} --output-dir out --batch-size 8 tracking=[] --max-steps 6 --data train.csv"
           " >a.out 2>a.err & p1=$!; sleep 0.3; {adapt} finetune --model {bert} --output-dir out --batch-size 8 "
           "tracking=[] --max-steps 6 --data train.csv >b.out 2>b.err & p2=$!; wait $p1; c1=$?; wait $p2; c2=$?; "
           "echo $c1 $c2"],
          Custom(one_run_locked_out, "one exit 0, the other exit 2 naming the lock"), files={"train.csv": TRAIN},
          shell=True),
    signal_probe("sigterm_saves_checkpoint", "TERM", "SIGTERM during training (what schedulers send)",
                 "exit 130/143, a checkpoint, a resume hint"),
    signal_probe("sigint_saves_checkpoint", "INT", "control: SIGINT (Ctrl-C) during training",
                 "exit 130, a checkpoint, a resume hint"),
    Probe("file_modes_umask_022", "D", "saved files under umask 022",
          ["umask 022; {adapt} finetune --model {bert} --output-dir out --batch-size 8 tracking=[] --max-steps 2 "
           "--save-steps 2 --data train.csv"],
          Succeed(file_modes, "exit 0, every file group/other-readable"), files={"train.csv": TRAIN}, shell=True),
    Probe("stale_temp_folders_cleaned", "D", "a killed run's .tmp-.final-* and .tmp-step-* folders, then --resume",
          ft(*RESUMABLE, "--resume", steps=4), Succeed(no_leftovers, "exit 0, no .tmp* left"),
          before=[shared("resumable"), stale_temp_folders]),
    Probe("resume_without_checkpoint", "D", "--resume when the attempt died before its first checkpoint",
          ft("--data", "train.csv", "--validation", "val.csv", "--resume"),
          Either(Succeed(lambda ctx: (metrics(ctx).get("train_steps") == 2, f"train_steps {metrics(ctx).get('train_steps')}"),
                         "exit 0, started afresh"),
                 Refuse(("--overwrite", "afresh", "delete", "remove"))),
          files={"train.csv": TRAIN, "val.csv": VAL}, setup=died_before_first_checkpoint),

    # ---- E: messages pointing at the wrong cause ----
    Probe("semicolon_csv", "E", "a ;-separated file named .csv", ft("--data", "d.csv"),
          Refuse(("d.csv",), ("';'", "semicolon", "delimit", "separat")), files={"d.csv": SEMICOLON}),
    Probe("pipe_csv", "E", "a |-separated file named .csv", ft("--data", "d.csv"),
          Refuse(("d.csv",), ("'|'", "pipe", "delimit", "separat")), files={"d.csv": PIPE}),
    Probe("tabs_in_csv", "E", "a tab-separated file named .csv", ft("--data", "d.csv"),
          Either(Succeed(id2label({"negative", "positive"}), "exit 0 (read as TSV)"),
                 Refuse(("d.csv",), ("tab", "\\t", "tsv", "delimit", "separat"))),
          files={"d.csv": TABS_AS_CSV * 1 + "".join(f"{t}\t{l}\n" for t, l in SENT)}),
    Probe("float_ids_in_validation", "E", "train labels 0/1, validation labels 0.0/1.0",
          ft("--data", "train.csv", "--validation", "val.csv"), Succeed(id2label({"negative", "positive"}), "exit 0, 2 classes"),
          files={"train.csv": table([(t, int(l == "positive")) for t, l in SENT[:32]]),
                 "val.csv": table([(t, float(l == "positive")) for t, l in SENT[32:]])}),
    Probe("csv_line_after_quoted_newline", "E", "a bad row after a quoted multi-line field: physical line number",
          ft("--data", "d.csv"), Refuse(("d.csv",), ("line 7",)), files={"d.csv": QUOTED_NEWLINE}),
    Probe("eval_model_json_no_rows", "E", "eval --model --json prints scores, not per-example rows",
          ["{adapt}", "eval", "--model", "out", "--data", "val.csv", "--json"],
          Succeed(lambda ctx: (ctx.json_out() is not None and find(ctx.json_out(), "predictions") is None
                               and "sluggish pacing" not in ctx.result.stdout and "terrible" not in ctx.result.stdout,
                               f"{len(ctx.result.stdout)} characters of JSON"), "exit 0, no per-example rows"),
          setup=shared("cls")),
    Probe("eval_model_output_has_rows", "E", "control: eval --model --output keeps per-example rows",
          ["{adapt}", "eval", "--model", "out", "--data", "val.csv", "--output", "report.json"],
          Succeed(lambda ctx: ("terrible" in (ctx.dir / "report.json").read_text(), "rows in report.json"),
                  "exit 0, rows in --output"), setup=shared("cls")),
    Probe("qa_short_inputs_no_warning", "E", "QA on short contexts (padded windows) prints no RuntimeWarning",
          ft("--recipe", "qa", "--data", "qa.jsonl", "train.max_length=64", "task_options.doc_stride=16", steps=1),
          Succeed(lambda ctx: ("RuntimeWarning" not in ctx.result.output, "no RuntimeWarning" if "RuntimeWarning"
                               not in ctx.result.output else "RuntimeWarning printed"), "exit 0, no warning"),
          files={"qa.jsonl": SHORT_QA}),

    # ---- F: other model families ----
    Probe("llama_sampling_generation_config", "F", "full FT of a Llama whose generation config has temperature/top_p without do_sample",
          ft(*CLM, "--data", "text.txt", model="{llama_sampling}"),
          Succeed(generation_config_saves, "exit 0, a generation config transformers saves"), files={"text.txt": SHAKESPEARE}),
    Probe("llama_eos_list_kept", "F", "the saved generation config keeps the checkpoint's EOS id list",
          ft(*CLM, "--data", "text.txt", model="{llama}"), Succeed(eos_ids([2, 0]), "exit 0, eos [2, 0]"),
          files={"text.txt": SHAKESPEARE}),
    Probe("bart_early_stopping_sampling", "F", "BART (early_stopping: true) with a recipe asking for sampling",
          ft(*S2S_ARGS, "task_options.temperature=0.7", model="{bart}"),
          Either(Succeed(generation_config_saves, "exit 0, valid generation config"), Refuse(("temperature",))),
          files={"s2s_train.jsonl": S2S_TRAIN, "s2s_val.jsonl": S2S_VAL}),
    *[Probe(f"lora_{family}", "F", f"LoRA on {family}: peft's default targets",
            ft(*CLM, "--data", "text.txt", "peft.method=lora", model="{" + family + "}"),
            Succeed(lora_targets, "exit 0, adapter with targets"), files={"text.txt": SHAKESPEARE})
      for family in ("gemma", "gemma2", "phi3", "opt")],
    Probe("lora_mbart", "F", "LoRA on mBART (seq2seq): peft's default targets",
          ft(*S2S_ARGS, "peft.method=lora", model="{mbart}"), Succeed(lora_targets, "exit 0, adapter with targets"),
          files={"s2s_train.jsonl": S2S_TRAIN, "s2s_val.jsonl": S2S_VAL}),
    Probe("seq2seq_lora_predict", "F", "predict with a seq2seq LoRA run folder (adapter only)",
          ["{adapt}", "predict", "--model", "out", "great film and the audience agreed"],
          Succeed(lambda ctx: (len(ctx.jsonl_out()) == 1, f"{len(ctx.jsonl_out())} prediction rows"), "exit 0, one prediction"),
          setup=shared("bart_lora")),
    *[Probe(f"{family}_sequence_classification", "F", f"sentiment classification with a {family} decoder (no pad token)",
            ft("--data", "train.csv", "--validation", "val.csv", "train.max_length=64", model="{" + family + "}"),
            Succeed(lambda ctx: ("accuracy" in metrics(ctx).get("validation", {}),
                                 f"validation accuracy {metrics(ctx).get('validation', {}).get('accuracy')}"),
                    "exit 0, scored"), files={"train.csv": TRAIN, "val.csv": VAL})
      for family in ("gpt2", "llama", "qwen2")],
    Probe("roberta_ner_prefix_space", "F", "NER with a byte-level BPE tokenizer: words keep their leading space",
          ft("--recipe", "ner", "--data", "train.conll", "--validation", "val.conll", "data.test=null",
             "train.max_length=64", model="{roberta}"),
          Succeed(word_keeps_space, "exit 0, 'lives' -> Ġlives"),
          files={"train.conll": NER_TRAIN, "val.conll": NER_VAL}),

    # ---- G: a user's own data with a named recipe ----
    Probe("summarize_own_data", "G", "--data my.jsonl with the summarize recipe: scored on my data, not SciTLDR",
          ft("--recipe", "summarize", "--data", "my.jsonl", "train.max_length=48", "task_options.max_target_length=12",
             "task_options.num_beams=1", model="{bart}"),
          Succeed(validation_count(30, 30), "exit 0, validation carved from my.jsonl"), files={"my.jsonl": jsonl(S2S[:30])},
          timeout=400),
    Probe("ner_own_data", "G", "--data my.conll with the ner recipe: scored on my data, not CoNLL-2003",
          ft("--recipe", "ner", "--data", "my.conll", "data.label_names=[O,B-PER,I-PER,B-ORG,I-ORG,B-LOC,I-LOC,B-MISC,I-MISC]"),
          Succeed(validation_count(48, 48), "exit 0, validation carved from my.conll"),
          files={"my.conll": NER_TRAIN}, timeout=400),
    Probe("eval_max_eval_examples", "G", "eval --model --data FILE --set data.max_eval_examples=5",
          ["{adapt}", "eval", "--model", "out", "--data", "val20.csv", "--set", "data.max_eval_examples=5", "--json"],
          Succeed(lambda ctx: (find(ctx.json_out(), "examples") == 5, f"examples {find(ctx.json_out(), 'examples')}"),
                  "exit 0, 5 examples"), files={"val20.csv": table(SENT[:20])}, setup=shared("cls")),
    Probe("brackets_shown_literally", "G", "predict --format table on text with [square brackets]",
          ["{adapt}", "predict", "--model", "out", "--format", "table", "because [the leads] are [b]great[/b]"],
          Succeed(lambda ctx: ("[the leads]" in ctx.result.stdout and "[b]great[/b]" in ctx.result.stdout,
                               "brackets shown" if "[the leads]" in ctx.result.stdout else "bracketed text vanished"),
                  "exit 0, text shown literally"), setup=shared("cls")),
    Probe("one_sentence_per_line_text", "G", "a PTB-style text file, one sentence per line, no blank lines",
          ft(*CLM, "--data", "ptb.txt", "task_options.block_size=16", model="{llama}"),
          Succeed(lambda ctx: (metrics(ctx).get("validation", {}).get("examples", 0) >= 1,
                               f"validation examples {metrics(ctx).get('validation', {}).get('examples')}"),
                  "exit 0, split into several examples"), files={"ptb.txt": PTB}),
    Probe("seq2seq_predict_jsonl_file", "G", "seq2seq predict --file inputs.jsonl summarises the text, not the JSON",
          ["{adapt}", "predict", "--model", "out", "--file", "inputs.jsonl"],
          Succeed(inputs_parsed, "exit 0, the model reads the source text"),
          files={"inputs.jsonl": jsonl([{"source": t} for t, _ in SENT[:3]])}, setup=shared("bart")),
    Probe("label_names_differ", "G", "labels neg/pos with the sentiment recipe's label_names negative/positive",
          ft("--data", "d.csv"),
          Either(Succeed(id2label({"neg", "pos"}), "exit 0 with classes neg/pos"),
                 Refuse(("data.label_names",), ("'neg'", "neg,", "(neg", "[neg"), forbid=("never appears in train",))),
          files={"d.csv": table([(t, l[:3]) for t, l in SENT])}),
]

# ---- issue 15, more kinds: mBART language codes, perplexity (unit, ragged tail, loading), QA windows, NER I-
# starts, multi-reference BLEU, and more messy data files ----------------------------------------------------
GERMAN = ["ein guter film", "ein schlechter film", "sehr gut", "sehr schlecht", "ich mochte ihn", "langweilig"]


def build_mbart_langs(folder: Path) -> None:
    """mBART with a real mBART tokenizer (language codes en_XX, de_DE, ... as special tokens) over the probe
    data's words, 2 layers of width 16."""
    import torch
    from transformers import MBartConfig, MBartForConditionalGeneration, MBartTokenizer

    words = sorted({w for t, _ in SENT for w in t.split()} | {w for t in GERMAN for w in t.split()})
    tokenizer = MBartTokenizer(vocab=[("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
                               + [("▁" + w, -1.0) for w in words])
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    MBartForConditionalGeneration(MBartConfig(
        vocab_size=len(tokenizer), d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=128,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2)).save_pretrained(folder)


def build_gpt2_bin(folder: Path) -> None:
    """The tiny GPT-2 (a causal LM) with its weights only as a pickled pytorch_model.bin."""
    import torch
    from safetensors.torch import load_file

    from fixtures import Fixtures

    source = Fixtures(folder.parent).path("gpt2")
    for item in source.iterdir():
        if item.name not in (".done", "model.safetensors"):
            shutil.copy(item, folder / item.name)
    torch.save(load_file(str(source / "model.safetensors")), folder / "pytorch_model.bin")


BUILDERS.update(mbart_langs=build_mbart_langs, gpt2_bin=build_gpt2_bin)

TRANSLATE_ARGS = ("--recipe", "translate", "--data", "train.en", "--validation", "val.en", "data.test=null",
                  "train.max_length=32", "task_options.max_target_length=8", "task_options.num_beams=1",
                  "train.eval_batch_size=8")
PARALLEL = {"train.en": "".join(t + "\n" for t, _ in SENT[:32]),
            "train.de": "".join(GERMAN[i % 6] + "\n" for i in range(32)),
            "val.en": "".join(t + "\n" for t, _ in SENT[32:]), "val.de": "".join(GERMAN[i % 6] + "\n" for i in range(8))}
SHARED["lora_clm"] = ({"text.txt": SHAKESPEARE}, ft(*CLM, "--data", "text.txt", "peft.method=lora", "--lr", "5e-2",
                                                     model="{llama}", steps=4))
SHARED["ner"] = ({"train.conll": NER_TRAIN, "val.conll": NER_VAL},
                 ft("--recipe", "ner", "--data", "train.conll", "--validation", "val.conll", "data.test=null",
                    steps=3))
PPL_TEXT = "First Citizen: Before we proceed any further, hear me speak.\n"  # one window of 64 positions
# one passage (under passage_chars=300, no blank line) that packs into whole blocks and a ragged tail
RAGGED_VAL = (DATA / "tiny_shakespeare" / "input.txt").read_text(encoding="utf-8")[6000:6270].replace("\n\n", "\n")  # 72 tokens


def mbart_language_codes(ctx: Ctx):
    """The run's tokenizer marks sources en_XX and targets de_DE, and generation starts with de_DE."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ctx.out)
    de, en = tokenizer.convert_tokens_to_ids("de_DE"), tokenizer.convert_tokens_to_ids("en_XX")
    forced = json.loads((ctx.out / "generation_config.json").read_text()).get("forced_bos_token_id")
    source = tokenizer("a good film")["input_ids"]
    ok = forced == de and source[-1] == en and de != tokenizer.unk_token_id
    return ok, f"forced_bos_token_id {forced} (de_DE = {de}); source ends with id {source[-1]} (en_XX = {en})"


def perplexity_of_whole_text(model: str):
    """Per model token, every token of the text but the first scored (none dropped), the right value."""
    def check(ctx: Ctx):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        scores = ctx.json_out()["scores"]["perplexity"]
        folder = ctx.fmt[model]
        ids = AutoTokenizer.from_pretrained(folder)(PPL_TEXT.rstrip("\n"), return_tensors="pt")["input_ids"]
        with torch.no_grad():
            right = float(torch.exp(AutoModelForCausalLM.from_pretrained(folder)(input_ids=ids, labels=ids).loss))
        ok = (scores.get("unit") == "per model token" and "per model token" in ctx.result.stdout.split('"notes"')[1]
              and scores["tokens"] == ids.shape[1] - 1 and scores.get("tokens_dropped") == 0
              and abs(scores["perplexity"] - right) <= 1e-4 * right)
        return ok, (f"unit {scores.get('unit')!r}, tokens {scores['tokens']} of {ids.shape[1]} (first has no context), "
                    f"dropped {scores.get('tokens_dropped')}, perplexity {scores['perplexity']:.2f} (by hand {right:.2f})")
    return check


def ragged_tail_reported(ctx: Ctx):
    """validation metrics report the ragged tail: tokens_dropped = tokens of val.txt (+ EOS) not in whole blocks."""
    from transformers import AutoTokenizer

    block = 32
    tokenizer = AutoTokenizer.from_pretrained(ctx.out)
    text = (ctx.dir / "val.txt").read_text()
    from adapt.data import split_passages

    passages = split_passages(text, 300)
    total = sum(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in passages) + 1  # + EOS at the end
    validation = metrics(ctx).get("validation", {})
    right = total % block
    noted = f"last {right} of" in ctx.result.stderr
    ok = right > 0 and validation.get("tokens_dropped") == right and noted and validation.get("tokens") == (total // block) * (block - 1)
    return ok, (f"tokens_dropped {validation.get('tokens_dropped')} (right {right} of {total}), tokens scored "
                f"{validation.get('tokens')}, note on stderr {'yes' if noted else 'no'}")


def lora_clm_perplexity(ctx: Ctx):
    """The adapter is applied: perplexity equals base + adapter loaded by peft, and differs from the base's."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    scores = ctx.json_out()["scores"]["perplexity"]
    base = ctx.fmt["llama"]
    ids = AutoTokenizer.from_pretrained(ctx.out)(PPL_TEXT.rstrip("\n"), return_tensors="pt")["input_ids"]
    with torch.no_grad():
        adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(ctx.out)).eval()
        right = float(torch.exp(adapted(input_ids=ids, labels=ids).loss))
        bare = float(torch.exp(AutoModelForCausalLM.from_pretrained(base)(input_ids=ids, labels=ids).loss))
    ok = abs(scores["perplexity"] - right) <= 1e-4 * right and abs(right - bare) > 1e-3 * bare
    return ok, f"perplexity {scores['perplexity']:.3f}; base + adapter by peft {right:.3f}; base alone {bare:.3f}"


QA_LONG_CONTEXT = " ".join(t + "." for t, _ in SENT)


def long_qa() -> str:
    """12 questions on a long context (about 300 words); every 4th is unanswerable (SQuAD v2 style)."""
    rows = []
    for i in range(12):
        context = f"Review {i}. {QA_LONG_CONTEXT} The review was written by critic number {i}."
        answer = f"critic number {i}"
        answers = ({"text": [], "answer_start": []} if i % 4 == 3
                   else {"text": [answer], "answer_start": [context.index(answer)]})
        rows.append({"id": str(i), "title": f"review {i}", "question": "Who wrote the review?", "context": context,
                     "answers": answers})
    return jsonl(rows)


def qa_windows_reported(ctx: Ctx):
    """The windows of 64 tokens (doc_stride 16) that HF's overflow gives, every question in several, the file's
    3 unanswerable questions counted over the splits, and no truncation warning."""
    from transformers import AutoTokenizer

    report = ctx.json_out()
    splits = report["splits"].values()
    train = report["splits"]["train"]
    rows = [json.loads(line) for line in (ctx.dir / "qa.jsonl").read_text().splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(ctx.fmt["bert"])
    enc = tokenizer([r["question"] for r in rows], [r["context"] for r in rows], truncation="only_second",
                    max_length=64, stride=16, return_overflowing_tokens=True)
    windows = max(enc["overflow_to_sample_mapping"].count(i) for i in range(len(rows)))
    text = json.dumps(report).lower()
    got = train.get("windows", {})
    unanswerable_right = sum(not r["answers"]["text"] for r in rows)
    unanswerable = sum(split.get("unanswerable", 0) for split in splits)
    several = sum(split.get("windows", {}).get("questions_with_several", 0) for split in splits)
    ok = (got.get("max") == windows and windows > 1 and several == len(rows) and unanswerable == unanswerable_right
          and "truncat" not in text)
    return ok, (f"windows max {got.get('max')} (HF overflow: {windows}), questions in >1 window {several} of "
                f"{len(rows)}, unanswerable {unanswerable} (the file has {unanswerable_right}), truncation warning: "
                f"{'truncat' in text}")


def ner_entities_as_scored(ctx: Ctx):
    """predict's tags are those the run scored (predictions_validation.jsonl), and its entities are the spans
    seqeval's default mode (the scorer) reads from them; no entity starts with I-."""
    from seqeval.metrics.sequence_labeling import get_entities

    rows = ctx.jsonl_out()
    saved = [r["prediction"] for r in read_jsonl(ctx.out / "predictions_validation.jsonl")]
    if [row["tags"] for row in rows] != saved:
        return False, "predict's tags differ from the tags the run scored"
    total, i_starts = 0, 0
    for row in rows:
        tags = row["tags"]
        spans = sorted((e["type"], e["start"], e["end"]) for e in row["entities"])
        scored = sorted((kind, start, end + 1) for kind, start, end in get_entities(tags))
        if spans != scored:
            return False, f"entities {spans} but seqeval reads {scored} from tags {tags}"
        total += len(spans)
        i_starts += sum(t.startswith("I-") and (k == 0 or tags[k - 1][2:] != t[2:]) for k, t in enumerate(tags))
    raw = raw_i_starts(ctx)  # the probe means something only if the model itself starts entities with I-
    ok = total > 0 and i_starts == 0 and raw > 0 and len(rows) == len(NER_VAL_SENTENCES)
    return ok, (f"{total} entities in {len(rows)} rows equal seqeval's spans; {i_starts} start with I- "
                f"(the model's own argmax tags start {raw} with I-)")


def raw_i_starts(ctx: Ctx) -> int:
    """Entities the saved model's argmax tags (first sub-token of each word) start with I-, by plain transformers."""
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ctx.out)
    model = AutoModelForTokenClassification.from_pretrained(ctx.out).eval()
    count = 0
    for sentence in NER_VAL_SENTENCES:
        words = [line.split()[0] for line in sentence]
        enc = tokenizer(words, is_split_into_words=True, truncation=True, return_tensors="pt")
        with torch.no_grad():
            best = model(**enc).logits[0].argmax(-1).tolist()
        firsts, seen = [], set()
        for position, word in enumerate(enc.word_ids()):
            if word is not None and word not in seen:
                seen.add(word)
                firsts.append(model.config.id2label[best[position]])
        count += sum(t.startswith("I-") and (k == 0 or firsts[k - 1][2:] != t[2:]) for k, t in enumerate(firsts))
    return count


def second_reference_is_prediction(ctx: Ctx) -> None:
    """test.jsonl: target = unrelated words, refs = [other words, the model's own prediction]."""
    import subprocess

    shared("bart")(ctx)
    sources = [json.loads(line)["source"] for line in S2S_VAL.splitlines()]
    (ctx.dir / "src.txt").write_text("".join(s + "\n" for s in sources))
    proc = subprocess.run([ctx.fmt["adapt"], "predict", "--model", "out", "--file", "src.txt"], cwd=ctx.dir,
                          env=ctx.fx.env, capture_output=True, text=True, timeout=300)
    outputs = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    texts = [o.get("generated_text", o.get("prediction")) for o in outputs]
    assert proc.returncode == 0 and len(texts) == len(sources) and all(texts), proc.stderr[-300:]
    rows = [{"source": s, "target": "zebra quantum umbrella", "ref_a": "violet harbor engine", "ref_b": p}
            for s, p in zip(sources, texts)]
    (ctx.dir / "test.jsonl").write_text(jsonl(rows))


def excel_named_csv(ctx: Ctx) -> None:
    import zipfile

    with zipfile.ZipFile(ctx.dir / "d.csv", "w") as book:  # the parts every .xlsx file starts with
        book.writestr("[Content_Types].xml", '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"/>')
        book.writestr("xl/workbook.xml", "<workbook/>")


def jsonl_records(rows, line_end="\n") -> str:
    return "".join(json.dumps({"text": t, "label": l}) + line_end for t, l in rows)


PROBES += [
    Probe("mbart_lang_codes", "F", "mBART translation with task_options.src_lang=en_XX tgt_lang=de_DE",
          ft(*TRANSLATE_ARGS, "task_options.src_lang=en_XX", "task_options.tgt_lang=de_DE", model="{mbart_langs}"),
          Succeed(mbart_language_codes, "exit 0, sources end en_XX, generation starts de_DE"), files=PARALLEL),
    Probe("mbart_lang_code_unknown", "F", "mBART with task_options.tgt_lang=xx_YY (no such language code)",
          ft(*TRANSLATE_ARGS, "task_options.src_lang=en_XX", "task_options.tgt_lang=xx_YY", model="{mbart_langs}"),
          Refuse(("tgt_lang",), ("xx_YY",)), files=PARALLEL),
    Probe("perplexity_per_model_token", "G", "eval --metric perplexity: says per model token, scores every token",
          ["{adapt}", "eval", "--metric", "perplexity", "--model", "{gpt2}", "--text-file", "t.txt", "--max-length",
           "64", "--json"],
          Succeed(perplexity_of_whole_text("gpt2"), "exit 0, per model token, right value, nothing dropped"),
          files={"t.txt": PPL_TEXT}),
    Probe("clm_ragged_tail_reported", "G", "clm validation text that fills no whole last block: tokens_dropped",
          ft(*CLM, "--data", "text.txt", "--validation", "val.txt", model="{llama}"),
          Succeed(ragged_tail_reported, "exit 0, tokens_dropped = the unscored tail"),
          files={"text.txt": SHAKESPEARE, "val.txt": RAGGED_VAL}),
    Probe("clm_eval_model_ragged_tail", "G", "eval --model <clm run> --data val.txt reports the ragged tail too",
          ["{adapt}", "eval", "--model", "out", "--data", "val.txt", "--json"],
          Succeed(lambda ctx: (find(ctx.json_out(), "tokens_dropped") == 8 and find(ctx.json_out(), "tokens") == 62,
                               f"tokens_dropped {find(ctx.json_out(), 'tokens_dropped')} (right 8 of 72), tokens "
                               f"{find(ctx.json_out(), 'tokens')} (2 blocks of 32: 62)"), "exit 0, tokens_dropped 8"),
          files={"val.txt": RAGGED_VAL}, setup=shared("lora_clm")),
    Probe("perplexity_lora_clm_run", "G", "eval --metric perplexity --model <LoRA clm run folder>",
          ["{adapt}", "eval", "--metric", "perplexity", "--model", "out", "--text-file", "t.txt", "--max-length", "64",
           "--json"],
          Succeed(lora_clm_perplexity, "exit 0, = base + adapter"), files={"t.txt": PPL_TEXT},
          setup=shared("lora_clm")),
    Probe("perplexity_pickle_only", "B", "eval --metric perplexity --model <causal LM with only pytorch_model.bin>",
          ["{adapt}", "eval", "--metric", "perplexity", "--model", "{gpt2_bin}", "--text-file", "t.txt",
           "--max-length", "64"],
          Refuse(("gpt2_bin",), ("safetensors",)), files={"t.txt": PPL_TEXT}),
    Probe("perplexity_encoder_model", "A", "eval --metric perplexity --model <BERT> (bidirectional: no perplexity)",
          ["{adapt}", "eval", "--metric", "perplexity", "--model", "{bert}", "--text-file", "t.txt", "--max-length",
           "64"],
          Refuse(("causal",)), files={"t.txt": PPL_TEXT}),
    Probe("qa_inspect_long_contexts", "G", "data inspect --recipe qa on long contexts with unanswerable questions",
          ["{adapt}", "data", "inspect", "--recipe", "qa", "--model", "{bert}", "--data", "qa.jsonl", "--json",
           "train.max_length=64", "task_options.doc_stride=16", "task_options.version_2_with_negative=true"],
          Succeed(qa_windows_reported, "exit 0, windows + unanswerable, no truncation warning"),
          files={"qa.jsonl": long_qa()}),
    Probe("ner_i_start_predict_equals_scorer", "G", "NER predict: entities = the spans the scorer reads",
          ["{adapt}", "predict", "--model", "out", "--file", "val.txt"],
          Succeed(ner_entities_as_scored, "exit 0, entities = seqeval spans, IOB2 tags"),
          files={"val.txt": NER_VAL_TEXTS}, setup=shared("ner")),
    Probe("multi_reference_bleu", "G", "eval --model on a test file with data.columns.references=[ref_a,ref_b]",
          ["{adapt}", "eval", "--model", "out", "--data", "test.jsonl", "--json", "data.columns.references=[ref_a,ref_b]",
           "task_options.metric_family=bleu"],
          Succeed(lambda ctx: (abs(find(ctx.json_out(), "bleu") - 100.0) < 1e-6
                               and "nrefs:3" in find(ctx.json_out(), "bleu_signature"),
                               f"bleu {find(ctx.json_out(), 'bleu')} (2nd reference = the prediction: 100), "
                               f"{find(ctx.json_out(), 'bleu_signature').split('|')[0]}"), "exit 0, BLEU 100 over 3 refs"),
          setup=second_reference_is_prediction, timeout=400),
    # more messy data files
    Probe("csv_bom_crlf", "E", "a CSV saved by Excel: UTF-8 BOM and Windows line endings (must work)",
          ft("--data", "d.csv"), Succeed(id2label({"negative", "positive"}), "exit 0, header read as text,label"),
          files={"d.csv": b"\xef\xbb\xbf" + table(SENT).replace("\n", "\r\n").encode()}),
    Probe("jsonl_crlf_blank_lines", "E", "JSONL with CRLF endings and blank lines between records (must work)",
          ft("--data", "d.jsonl"), Succeed(id2label({"negative", "positive"}), "exit 0, 2 classes"),
          files={"d.jsonl": jsonl_records(SENT, "\r\n\r\n")}),
    Probe("jsonl_trailing_comma", "B", "JSONL whose 5th line ends with a comma (copied from a JSON array)",
          ft("--data", "d.jsonl"), Refuse(("d.jsonl",), ("line 5",)),
          files={"d.jsonl": jsonl_records(SENT[:4]) + json.dumps({"text": SENT[4][0], "label": SENT[4][1]}) + ",\n"
                 + jsonl_records(SENT[5:])}),
    Probe("utf16_jsonl", "B", "a UTF-16 JSONL file (Windows 'Unicode' encoding)", ft("--data", "d.jsonl"),
          Refuse(("d.jsonl",), ("utf-16", "utf-8", "encod")), files={"d.jsonl": jsonl_records(SENT).encode("utf-16")}),
    Probe("tsv_header_trailing_tab", "B", "a TSV whose header line ends with a tab (an empty column name)",
          ft("--data", "d.tsv"),
          Either(Succeed(id2label({"negative", "positive"}), "exit 0, the empty column ignored"),
                 Refuse(("d.tsv",), ("line 1", "header line"), forbid=("line 2",))),
          files={"d.tsv": "text\tlabel\t\n" + "".join(f"{t}\t{l}\n" for t, l in SENT)}),
    Probe("csv_unclosed_quote", "E", "a CSV whose 4th line opens a quote it never closes",
          ft("--data", "d.csv"), Refuse(("d.csv",), ("line 4",)),
          files={"d.csv": table(SENT[:2]) + '"an unclosed quote,positive\n' + table(SENT[2:]).split("\n", 1)[1]}),
    Probe("xlsx_named_csv", "E", "an Excel workbook (a ZIP file) named .csv", ft("--data", "d.csv"),
          Refuse(("d.csv",), ("excel", "xlsx", "spreadsheet", "zip")), setup=excel_named_csv),
    Probe("bz2_truncated_jsonl", "B", "a truncated .jsonl.bz2", ft("--data", "d.jsonl.bz2"), Refuse(("d.jsonl.bz2",)),
          files={"d.jsonl.bz2": compressed(bz2.compress, jsonl_records(SENT) * 20, 0.6)}),
]

# More variants of kinds the default table already covers; run with --all.
EXTRA = {
    "lora2_export_merge", "bioes_identical_files", "nan_label_parquet", "float_ids_jsonl", "empty_text_cell",
    "resume_changed_data", "bleu_identical_japanese", "bleu_identical_english", "truncated_bz2", "truncated_xz",
    "gz_not_gzip", "zstd_compression", "json_list_of_strings", "utf16_csv", "latin1_csv",
    "summarize_default_length_on_bart", "model_folder_missing", "model_config_corrupt", "output_dir_under_a_file",
    "max_length_over_512", "task_option_unknown", "output_dir_is_a_file", "remote_code_via_run_recipe_eval",
    "sigint_saves_checkpoint", "pipe_csv", "tabs_in_csv", "eval_model_output_has_rows", "lora_gemma2", "lora_opt",
    "lora_mbart", "llama_sequence_classification", "qwen2_sequence_classification",
}
for _probe in PROBES:
    _probe.extra = _probe.name in EXTRA
assert EXTRA <= {p.name for p in PROBES}, EXTRA - {p.name for p in PROBES}
