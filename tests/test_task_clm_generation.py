"""Generation metrics of the causal LM task: validation and test of prompt/completion data also generate each
completion (left-padded batches, KV cache) and score BLEU, chrF, ROUGE and exact match next to perplexity;
parallel line files (Multi30k) as templated prompt/completion pairs; the translate recipes."""

import gzip
import json
import math

import pytest
import sacrebleu
import torch
from accelerate import Accelerator
from datasets import Dataset
from typer.testing import CliRunner

from adapt.cli import app
from adapt.errors import AdaptError
from adapt.metrics.generation import exact_match_score
from adapt.recipe import resolve_recipe
from adapt.tasks import get_task
from adapt.train import evaluate, finetune
from test_bad_input import assert_user_error
from test_task_clm import make_task, tiny_llama, tokenizer_dir, write_pairs, write_text  # noqa: F401 (fixtures)

# two pairs whose generations are forced below: the first reproduces its reference, the second drops the
# final " ." (hand-checked BLEU: all n-gram precisions 1, hypothesis 9 tokens, reference 10 -> BP = e^(1 - 10/9))
PAIRS = [("Echo one", "Eine Frau singt ."), ("Echo two", "Ein Hund läuft im Park .")]
FORCED = ["Eine Frau singt .", "Ein Hund läuft im Park"]


def pairs_task(model_dir, overrides=()):
    task = make_task(model_dir, [("task_options.max_new_tokens", 12), *overrides])
    raw = Dataset.from_dict({"prompt": [p for p, _ in PAIRS], "completion": [c for _, c in PAIRS]})
    return task, raw


def forced_model(task, model_dir, outputs: list[str]):
    """The tiny Llama with a `sequence_bias` that makes greedy decoding write `outputs[i]` then EOS after
    prompt i: each wanted token gets +1000 after its two preceding tokens (transformers' SequenceBias)."""
    model = task.build_model(str(model_dir)).eval()
    bias = {}
    for (prompt, _), text in zip(PAIRS, outputs):
        context = task.tokenizer(task.render_prompt(prompt))["input_ids"][-2:]
        for token in task.tokenizer(text, add_special_tokens=False)["input_ids"] + [task.tokenizer.eos_token_id]:
            assert not any(key[:2] == tuple(context) and key[2] != token for key in bias), "ambiguous context"
            bias[(*context, token)] = 1000.0
            context = [context[1], token]
    model.generation_config.sequence_bias = bias
    return model


def test_exact_match_strips_whitespace_but_keeps_case():
    assert exact_match_score([" Ein Hund. ", "ein hund.", "Ein Hund"], ["Ein Hund.", "Ein Hund.", "Ein Hund."]) == 1 / 3
    with pytest.raises(AdaptError, match="2 predictions but 1 references"):
        exact_match_score(["a", "b"], ["a"])


def test_forced_generations_score_hand_checked_bleu_rouge_and_exact_match(tiny_llama):
    task, raw = pairs_task(tiny_llama)
    model = forced_model(task, tiny_llama, FORCED)
    features = task.featurize(raw, "test")
    metrics, predictions = evaluate(task, model, features, raw, Accelerator(cpu=True), batch_size=2)
    assert [p["generated_text"] for p in predictions] == FORCED
    assert metrics["bleu"] == pytest.approx(100 * math.exp(1 - 10 / 9), abs=1e-4)  # 89.4839
    assert metrics["exact_match"] == 0.5
    assert metrics["rouge1"] == metrics["rougeL"] == 1.0  # ROUGE's tokenizer drops the missing "."
    assert metrics["chrf"] == pytest.approx(sacrebleu.corpus_chrf(FORCED, [[c for _, c in PAIRS]]).score)
    lengths = [len(task.tokenizer(t, add_special_tokens=False)["input_ids"]) + 1 for t in FORCED]  # + EOS
    assert metrics["gen_len"] == sum(lengths) / 2 and metrics["generated_examples"] == 2
    assert math.isfinite(metrics["perplexity"]) and metrics["tokens"] > 0  # teacher-forced NLL on the same rows
    rows = task.example_predictions(predictions, raw)
    assert rows[1]["generated_text"] == FORCED[1] and rows[1]["completion"] == PAIRS[1][1]


def test_left_padded_batched_generation_equals_each_prompt_alone(tiny_llama, tmp_path):
    task = make_task(tiny_llama, [("task_options.max_new_tokens", 6)])
    raw = task.read_source(str(write_pairs(tmp_path / "p.jsonl", n=12)), "validation")
    raw = raw.map(lambda row, i: {"prompt": row["prompt"] + " ok" * (i % 4)}, with_indices=True)  # ragged prompts
    model = task.build_model(str(tiny_llama)).eval()
    features = task.featurize(raw, "test")
    _, predictions = evaluate(task, model, features, raw, Accelerator(cpu=True), batch_size=5)
    for prompt, prediction in zip(raw["prompt"], predictions):
        ids = torch.tensor([task.tokenizer(prompt)["input_ids"]])
        alone = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                               max_new_tokens=6, pad_token_id=task.tokenizer.pad_token_id)
        assert prediction["generated_text"] == task.tokenizer.decode(alone[0, ids.shape[1]:], skip_special_tokens=True)


def test_a_wrapped_model_stops_at_the_checkpoints_stop_ids(tiny_llama):
    """Under DDP (here DataParallel, which accelerate unwraps the same way) evaluation generates with the bare
    model and stops at its generation_config's ids, not only at the tokenizer's EOS."""
    task, raw = pairs_task(tiny_llama)
    model = task.build_model(str(tiny_llama)).eval()
    batch = task.collate(task.featurize(raw, "test")[:])
    plain = task.eval_step(model, batch)
    assert plain["gen_len"].tolist() != [1, 1]  # untrained: no early EOS
    model.generation_config.eos_token_id = [task.tokenizer.eos_token_id, *plain["generated"][:, 0].tolist()]
    wrapped = task.eval_step(torch.nn.DataParallel(model), batch)
    assert wrapped["gen_len"].tolist() == [1, 1]  # each row stops at its first token, now a stop id
    assert torch.equal(wrapped["generated"][:, 0], plain["generated"][:, 0])
    assert (wrapped["generated"][:, 1:] == task.tokenizer.pad_token_id).all()


def test_validation_generates_its_first_n_examples_test_and_eval_generate_all(tiny_llama, tmp_path):
    task = make_task(tiny_llama, [("task_options.generation_max_examples", 3)])
    raw = task.read_source(str(write_pairs(tmp_path / "p.jsonl", n=8)), "validation")
    generated = {role: [bool(ids) for ids in task.featurize(raw, role)["prompt_ids"]] for role in ("validation", "test", "eval")}
    assert generated["validation"] == [True] * 3 + [False] * 5
    assert generated["test"] == generated["eval"] == [True] * 8
    assert "prompt_ids" not in task.featurize(raw, "train").column_names
    first = task.featurize(raw, "validation")[0]
    assert first["prompt_ids"] == task.tokenizer(raw["prompt"][0])["input_ids"]  # the prompt part of input_ids
    assert first["input_ids"][:len(first["prompt_ids"])] == first["prompt_ids"]
    off = make_task(tiny_llama, [("task_options.generation_metrics", False)])
    assert "prompt_ids" not in off.featurize(raw, "test").column_names


def test_a_sharded_model_generates_in_every_batch_so_processes_stay_in_step(tiny_llama, tmp_path, monkeypatch):
    """Under FSDP each token's forward gathers weights from all processes: a batch without rows to generate
    (past generation_max_examples) still runs one generate() on a sharded model, and none on a plain one."""
    task = make_task(tiny_llama, [("task_options.generation_max_examples", 2), ("task_options.max_new_tokens", 3)])
    raw = task.read_source(str(write_pairs(tmp_path / "p.jsonl", n=4)), "validation")
    features = task.featurize(raw, "validation")
    model = task.build_model(str(tiny_llama)).eval()
    calls = []
    real = task.generate
    monkeypatch.setattr(task, "generate", lambda m, b, *a, **k: calls.append(b["input_ids"].shape) or real(m, b, *a, **k))
    without = task.collate(features[2:4])  # rows 2-3: nothing to generate
    assert without["generate_rows"].tolist() == []
    out = task.eval_step(model, without)
    assert calls == [] and "generated" not in out
    model._is_fsdp_managed_module = True  # what adapt.fsdp.mark_for_generation sets on a sharded model
    out = task.eval_step(model, without)
    assert calls == [torch.Size([1, 1])] and "generated" not in out  # a 1-token prompt, its output unused
    with_rows = task.collate(features[0:2])
    assert task.eval_step(model, with_rows)["has_generation"].tolist() == [True, True] and len(calls) == 2


def test_generation_metrics_are_greater_is_better_and_perplexity_stays_the_default(tiny_llama):
    assert not make_task(tiny_llama).greater_is_better and make_task(tiny_llama).default_metric == "perplexity"
    for name in ("bleu", "chrf", "rougeL", "exact_match"):
        assert make_task(tiny_llama, [("train.metric_for_best", name)]).greater_is_better, name
    assert not make_task(tiny_llama, [("train.metric_for_best", "nll")]).greater_is_better


def test_finetune_keeps_the_best_chrf_and_writes_generations(tiny_llama, tmp_path, adapt_cache):
    run = tmp_path / "run"
    pairs = write_pairs(tmp_path / "pairs.jsonl", n=24)
    final = finetune(resolve_recipe("clm", [
        ("model", str(tiny_llama)), ("data.train", str(pairs)), ("data.test", str(pairs)), ("train.max_steps", 3),
        ("train.eval_steps", 1), ("train.batch_size", 4), ("train.lr", 1e-3), ("train.max_length", 64),
        ("train.metric_for_best", "chrf"), ("task_options.max_new_tokens", 6), ("output_dir", str(run)),
        ("tracking", [])]))
    validation = final["validation"]
    for name in ("perplexity", "bleu", "chrf", "rouge1", "rouge2", "rougeL", "exact_match", "gen_len"):
        assert name in validation and name in final["test"], name
    assert final["test"]["generated_examples"] == 24
    evals = [r for r in map(json.loads, (run / "train_log.jsonl").read_text().splitlines()) if r["kind"] == "eval"]
    assert len({r["chrf"] for r in evals}) > 1  # the choice below is a real one
    best = max(evals, key=lambda r: (r["chrf"], -r["step"]))  # greater is better for chrF; the first best is kept
    assert final["best_step"] == best["step"] and final["best_chrf"] == pytest.approx(best["chrf"])
    rows = [json.loads(line) for line in (run / "predictions_validation.jsonl").read_text().splitlines()]
    assert all("generated_text" in row for row in rows)
    hyps = [row["generated_text"].strip() for row in rows]
    refs = [row["completion"] for row in rows]
    assert validation["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert validation["exact_match"] == sum(h == r for h, r in zip(hyps, refs)) / len(rows)


def _write_parallel(folder, english, german, name="train"):
    for lang, lines in (("en", english), ("de", german)):
        with gzip.open(folder / f"{name}.{lang}.gz", "wt", encoding="utf-8") as handle:
            handle.write("".join(line + "\n" for line in lines))
    return folder / f"{name}.en.gz"


def test_parallel_line_files_become_templated_prompt_completion_pairs(tiny_llama, tmp_path):
    source = _write_parallel(tmp_path, ["A dog runs.", "Two men sing."], ["Ein Hund läuft.", "Zwei Männer singen."])
    task = make_task(tiny_llama, [("task_options.source_lang", "en"), ("task_options.target_lang", "de"),
                                  ("task_options.prompt_template", "Translate English to German: {prompt}\nGerman:")])
    raw = task.read_source(str(source), "validation")
    assert raw.to_list() == [{"prompt": "A dog runs.", "completion": "Ein Hund läuft."},
                             {"prompt": "Two men sing.", "completion": "Zwei Männer singen."}]
    prompt = task.render_prompt(raw["prompt"][1])
    assert prompt == "Translate English to German: Two men sing.\nGerman:" and task.references(raw)[1] == "Zwei Männer singen."
    row = task.featurize(raw, "train")[1]
    prompt_ids = task.tokenizer(prompt)["input_ids"]
    assert row["input_ids"][:len(prompt_ids)] == prompt_ids and row["labels"][:len(prompt_ids)] == [-100] * len(prompt_ids)
    assert task.tokenizer.decode([t for t in row["labels"] if t != -100], skip_special_tokens=True) == "Zwei Männer singen."


def test_bad_parallel_files_name_the_file_and_line(tiny_llama, tmp_path):
    task = make_task(tiny_llama, [("task_options.source_lang", "en"), ("task_options.target_lang", "de")])
    source = _write_parallel(tmp_path, ["A dog runs.", "Two men sing."], ["Ein Hund läuft.", ""])
    with pytest.raises(AdaptError, match=r"the de twin of .*train\.en\.gz: line 2 is empty"):
        task.read_source(str(source), "train")
    uneven = _write_parallel(tmp_path, ["A dog runs.", "Two men sing."], ["Ein Hund läuft."], name="uneven")
    with pytest.raises(AdaptError, match=r"uneven\.en\.gz has 2 lines but .*uneven\.de\.gz has 1"):
        task.read_source(str(uneven), "train")
    (tmp_path / "lonely.en.gz").write_bytes(gzip.compress(b"A dog.\n"))
    with pytest.raises(AdaptError, match=r"lonely\.de\.gz does not exist"):
        task.read_source(str(tmp_path / "lonely.en.gz"), "train")
    unnamed = tmp_path / "sentences.txt"
    unnamed.write_text("A dog.\n")
    with pytest.raises(AdaptError, match=r"no '\.en' language suffix"):
        task.read_source(str(unnamed), "train")


def _finetune_cli(model, out, *args):
    return CliRunner().invoke(app, ["finetune", "--recipe", "clm", "--model", str(model), "--output-dir", str(out),
                                    "--max-steps", "1", "tracking=[]", *args])


def test_generation_options_that_cannot_work_are_refused_before_training(tiny_llama, tmp_path, adapt_cache):
    out = tmp_path / "out"
    text = str(write_text(tmp_path / "t.txt"))
    pairs = str(write_pairs(tmp_path / "pairs.jsonl"))
    result = _finetune_cli(tiny_llama, out, "--data", text, "task_options.generation_metrics=true")
    assert_user_error(result, out, "task_options.generation_metrics is true but the data is plain text")
    result = _finetune_cli(tiny_llama, out, "--data", text, "train.metric_for_best=bleu")
    assert_user_error(result, out, "train.metric_for_best 'bleu' scores generated completions", "plain text")
    result = _finetune_cli(tiny_llama, out, "--data", pairs, "train.metric_for_best=chrf",
                           "task_options.generation_metrics=false")
    assert_user_error(result, out, "'chrf' scores generated completions", "generation_metrics is false")
    result = _finetune_cli(tiny_llama, out, "--data", pairs, "task_options.prompt_template=Translate: ")
    assert_user_error(result, out, "'prompt_template'", "placeholder {prompt}")
    result = _finetune_cli(tiny_llama, out, "--data", pairs, "task_options.generation_max_examples=0")
    assert_user_error(result, out, "'generation_max_examples'")


def test_translate_recipes_decoder_default_and_encoder_decoder_alternative():
    decoder = resolve_recipe("translate")
    assert (decoder.task, decoder.model, decoder.train.metric_for_best) == ("clm", "embedded:smollm2", "bleu")
    assert decoder.task_options["source_lang"] == "en" and decoder.task_options["target_lang"] == "de"
    assert "{prompt}" in decoder.task_options["prompt_template"]
    task = get_task(decoder)
    assert task.greater_is_better and task.options.target_lang == "de"
    encdec = resolve_recipe("translate-encdec")
    assert (encdec.task, encdec.model) == ("seq2seq", "embedded:minilm")
    assert encdec.data.test == decoder.data.test == "../shared/data/multi30k/test_2016_flickr.en.gz"
