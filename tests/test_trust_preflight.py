"""Preflight (issue 15, kind C and parts of B and G): everything knowable before a run's first write is
checked up front, each failure is one `error:` line naming the field or file and the fix, exit 2, and
nothing is written. Recipes that are directories or not UTF-8 are one line; `--data` with a named recipe
drops the recipe's own validation/test files and says which data the run scores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datasets import Dataset
from typer.testing import CliRunner

from adapt import preflight
from adapt.cli import app
from adapt.errors import AdaptError
from adapt.recipe import parse_overrides, resolve_recipe, resolve_with_flags
from adapt.tasks import TASKS, get_task

FAST = ["tracking=[]", "train.batch_size=8"]


def finetune(tmp_path: Path, model: Path, data: Path, *args: str, recipe: str = "sentiment"):
    """`adapt finetune` in-process; returns (result, output dir)."""
    out = tmp_path / "out"
    argv = ["finetune", "--recipe", recipe, "--model", str(model), "--data", str(data), "--output-dir", str(out),
            "--max-steps", "2", *FAST, *args]
    return CliRunner().invoke(app, argv), out


def assert_refused(result, *fragments: str) -> str:
    """Exit 2 with exactly one `error:` line on stderr holding every fragment, and no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


# ---- each check via the CLI: exit 2, one line, nothing written ------------------------------------
def test_metric_for_best_that_the_task_does_not_report(tmp_path, tiny_bert, sentiment_csv, adapt_cache):
    result, out = finetune(tmp_path, tiny_bert, sentiment_csv, "train.metric_for_best=bogus")
    assert_refused(result, "train.metric_for_best 'bogus' is not a metric of task 'classification'",
                   "use one of accuracy, f1_macro")
    assert not out.exists()


def test_max_length_past_the_model_positions(tmp_path, tiny_bert, sentiment_csv, adapt_cache):
    result, out = finetune(tmp_path, tiny_bert, sentiment_csv, "train.max_length=4096")
    line = assert_refused(result, "train.max_length=4096 is longer than the model", "(512 positions",
                          "set train.max_length to at most 512")
    assert str(tiny_bert) in line
    assert not out.exists()


def test_unknown_peft_method(tmp_path, tiny_bert, sentiment_csv, adapt_cache):
    result, out = finetune(tmp_path, tiny_bert, sentiment_csv, "peft.method=nope")
    assert_refused(result, "peft.method 'nope' is not a peft method", "e.g. peft.method=lora")
    assert not out.exists()


def test_peft_target_modules_that_match_nothing(tmp_path, tiny_bert, sentiment_csv, adapt_cache):
    result, out = finetune(tmp_path, tiny_bert, sentiment_csv, "peft.target_modules=[nomatch]")
    assert_refused(result, "peft.target_modules", "nomatch", "query")
    assert not out.exists()


@pytest.mark.parametrize("setting", ["peft.r=0", "peft.alpha=0", "peft.dropout=1.5"])
def test_peft_sizes_must_be_positive(tmp_path, tiny_bert, sentiment_csv, setting):
    result, out = finetune(tmp_path, tiny_bert, sentiment_csv, setting)
    assert_refused(result, f"bad value for '{setting.split('=')[0]}'")
    assert not out.exists()


def test_output_dir_that_is_a_file_is_left_alone(tmp_path, tiny_bert, sentiment_csv):
    target = tmp_path / "out"
    target.write_text("my notes\n")
    result, _ = finetune(tmp_path, tiny_bert, sentiment_csv)
    assert_refused(result, f"output_dir {target} is a file, not a folder", "choose another --output-dir")
    assert target.read_text() == "my notes\n"


def test_output_dir_under_a_file_cannot_be_created(tmp_path, tiny_bert, sentiment_csv):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    result = CliRunner().invoke(app, ["finetune", "--model", str(tiny_bert), "--data", str(sentiment_csv),
                                      "--output-dir", str(blocker / "run"), *FAST])
    assert_refused(result, f"output_dir {blocker / 'run'} cannot be created: {blocker} is a file")
    assert blocker.read_text() == "x"


def test_tracking_names(tmp_path, tiny_bert, sentiment_csv):
    result, out = finetune(tmp_path, tiny_bert, sentiment_csv, "tracking=[bogus]")
    assert_refused(result, "tracking: 'bogus' is not an Accelerate tracker", "tracking=[]")
    assert not out.exists()


def test_tracker_that_is_not_installed():
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

    missing = sorted(set(LOGGER_TYPE_TO_CLASS) - {str(t.value) for t in get_available_trackers()})
    if not missing:
        pytest.skip("every Accelerate tracker is installed here")
    with pytest.raises(AdaptError, match=rf"tracking: '{missing[0]}' is not installed here .*pip install {missing[0]}"):
        preflight.check_tracking([missing[0]])


def test_fp16_on_a_machine_without_cuda(tmp_path, tiny_bert, sentiment_csv):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    result, out = finetune(tmp_path, tiny_bert, sentiment_csv, "train.mixed_precision=fp16")
    assert_refused(result, "train.mixed_precision=fp16 needs a CUDA GPU")
    assert not out.exists()


def test_early_stopping_without_periodic_evaluation(tmp_path, tiny_bert, sentiment_csv):
    result, out = finetune(tmp_path, tiny_bert, sentiment_csv, "train.early_stopping_patience=2")
    assert_refused(result, "train.early_stopping_patience=2 needs periodic evaluation", "set train.eval_steps")
    assert not out.exists()


# ---- the model folder: safetensors only, remote code only when asked ------------------------------------
def model_folder(tmp_path: Path, tiny_bert: Path, name: str, config_update: dict | None = None,
                 drop_weights: bool = False) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    for item in tiny_bert.iterdir():
        if drop_weights and item.suffix == ".safetensors":
            (folder / "pytorch_model.bin").write_bytes(b"pickle")
            continue
        (folder / item.name).write_bytes(item.read_bytes())
    if config_update:
        config = json.loads((folder / "config.json").read_text())
        config.update(config_update)
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_model_folder_without_safetensors(tmp_path, tiny_bert, sentiment_csv):
    folder = model_folder(tmp_path, tiny_bert, "pickled", drop_weights=True)
    result, out = finetune(tmp_path, folder, sentiment_csv)
    assert_refused(result, f"model {folder}: no .safetensors weights (only pytorch_model.bin)",
                   "adapt loads only safetensors")
    assert not out.exists()


def test_model_with_shipped_code_needs_the_flag(tmp_path, tiny_bert, sentiment_csv):
    folder = model_folder(tmp_path, tiny_bert, "custom", {"auto_map": {"AutoConfig": "configuration_x.XConfig"}})
    result, out = finetune(tmp_path, folder, sentiment_csv)
    assert_refused(result, "runs code shipped with the model (auto_map)", "pass trust_remote_code=true on this command")
    assert not out.exists()


def test_unknown_model_type_needs_remote_code(tmp_path, tiny_bert, sentiment_csv):
    folder = model_folder(tmp_path, tiny_bert, "unknown", {"model_type": "telepathy_net"})
    result, out = finetune(tmp_path, folder, sentiment_csv)
    assert_refused(result, "model type 'telepathy_net' is unknown to transformers", "trust_remote_code=true")
    assert not out.exists()
    result, _ = finetune(tmp_path, folder, sentiment_csv, "trust_remote_code=true")
    assert_refused(result, "ships no code for it (no auto_map)")


# ---- recipes --------------------------------------------------------------------------------------------
def test_recipe_path_that_is_a_directory(tmp_path):
    folder = tmp_path / "myrecipes"
    folder.mkdir()
    (folder / "recipe.yaml").write_text("task: classification\nmodel: m\n")
    result = CliRunner().invoke(app, ["finetune", "--recipe", str(folder)])
    assert_refused(result, f"recipe {folder} is a directory, not a recipe file", f"e.g. {folder / 'recipe.yaml'}")
    assert sorted(p.name for p in folder.iterdir()) == ["recipe.yaml"]


def test_recipe_that_is_not_utf8(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("task: classification\nmodel: m\ndescription: caf\xe9\n".encode("latin-1"))
    result = CliRunner().invoke(app, ["finetune", "--recipe", str(path)])
    assert_refused(result, f"{path}: line 3: not UTF-8 text (byte 0xe9)", "re-save it as UTF-8")


def test_recipe_that_is_not_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("task: classification\nmodel: [m\n")
    result = CliRunner().invoke(app, ["data", "inspect", "--recipe", str(path)])
    assert_refused(result, f"{path}: line 3: not valid YAML", "fix the YAML syntax")


def test_missing_recipe_file(tmp_path):
    with pytest.raises(AdaptError, match=rf"recipe file {tmp_path / 'x.yaml'} does not exist"):
        resolve_recipe(str(tmp_path / "x.yaml"))


def test_overrides_of_text_fields_stay_text():
    """YAML parsing gives numbers, lists and mappings; a text field keeps the text as typed."""
    assert parse_overrides(["data.train=2024", "model=007", "tokenizer=1e3", "train.seed=3", "train.lr=3e-5",
                            "data.label_names=[1, 2]", "task_options.num_beams=2"]) == [
        ("data.train", "2024"), ("model", "007"), ("tokenizer", "1e3"), ("train.seed", 3), ("train.lr", 3e-5),
        ("data.label_names", [1, 2]), ("task_options.num_beams", 2)]
    assert resolve_recipe("sentiment", parse_overrides(["data.train=2024"])).data.train == "2024"


# ---- G: --data with a named recipe ---------------------------------------------------------------------------
def ner_jsonl(path: Path, sentences: int = 20) -> Path:
    rows = [{"tokens": ["Anna", "lives", "in", "Oslo", str(i)], "ner_tags": ["B-PER", "O", "O", "B-LOC", "O"]}
            for i in range(sentences)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_data_flag_replaces_the_recipes_validation_and_test(tmp_path):
    mine = str(tmp_path / "my.jsonl")
    recipe = resolve_with_flags("ner", {"data": mine}, [])
    assert (recipe.data.train, recipe.data.validation, recipe.data.test) == (mine, None, None)
    assert recipe.data_note.startswith(
        f"note: training on {mine}; validation: a seeded 10% of {mine} held out; test: none")
    assert "not the recipe's own validation file ../shared/data/conll2003/valid.txt and test file" in recipe.data_note
    # what the command line gives is kept
    recipe = resolve_with_flags("ner", {"data": mine, "test": "t.txt"}, ["data.validation=v.txt"])
    assert (recipe.data.validation, recipe.data.test) == ("v.txt", "t.txt")
    assert recipe.data_note == f"note: training on {mine}; validation: v.txt; test: t.txt"
    # the recipe's own training data keeps its own validation and test files
    recipe = resolve_with_flags("ner", {"data": "../shared/data/conll2003/train.txt"}, [])
    assert recipe.data.test == "../shared/data/conll2003/test.txt"
    # without --data nothing changes and there is no note
    recipe = resolve_with_flags("ner", {}, [])
    assert recipe.data.validation == "../shared/data/conll2003/valid.txt" and recipe.data_note is None


def test_ner_run_on_own_data_scores_a_carved_validation_split(tmp_path, tiny_bert, adapt_cache):
    data = ner_jsonl(tmp_path / "my.jsonl")
    result, out = finetune(tmp_path, tiny_bert, data, "train.max_length=32", recipe="ner")
    assert result.exit_code == 0, (result.output, result.exception)
    assert f"note: training on {data}; validation: a seeded 10% of {data} held out; test: none" in result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert "test" not in metrics and metrics["validation"]["examples"] == 2  # 10% of 20 sentences


# ---- task metric names ---------------------------------------------------------------------------------------
def scored(task_name: str, overrides=()) -> tuple[object, dict]:
    """(task, its real `score` output) on two hand-made examples."""
    recipe = {"classification": "sentiment", "ner": "ner", "qa": "qa", "clm": "clm", "seq2seq": "summarize",
              "mlm": "mlm", "chat": "chat", "dpo": "dpo"}[task_name]
    task = get_task(resolve_recipe(recipe, list(overrides)))
    if task_name == "classification" and task.problem_type == "regression":
        return task, task.score([{"score": 1.0}, {"score": 2.5}, {"score": 2.0}], Dataset.from_dict({"label": [1.0, 3.0, 2.5]}))
    if task_name == "classification" and task.problem_type == "multi_label_classification":
        task.label_names = ["anger", "joy"]
        task.threshold = 0.5
        return task, task.score([{"probs": [0.2, 0.9]}, {"probs": [0.4, 0.1]}], Dataset.from_dict({"label": [["joy"], ["anger"]]}))
    if task_name == "classification":
        task.label_names = ["negative", "positive"]
        return task, task.score([{"label": "positive"}, {"label": "negative"}], Dataset.from_dict({"label": ["positive", "positive"]}))
    if task_name == "ner":
        tags = [["B-PER", "O"], ["O", "B-LOC"]]
        return task, task.score([{"tags": t, "truncated_words": 0} for t in tags], Dataset.from_dict({"tags": tags}))
    if task_name == "qa":
        second = {"text": [], "answer_start": []} if task.options.version_2_with_negative else {"text": ["Bergen"], "answer_start": [9]}
        raw = Dataset.from_dict({"id": ["a", "b"], "answers": [{"text": ["Oslo"], "answer_start": [0]}, second]})
        return task, task.score([{"answer": "Oslo"}, {"answer": ""}], raw)
    if task_name == "dpo":
        pairs = [{"chosen_logps": -3.0, "rejected_logps": -5.0, "ref_chosen_logps": -4.0, "ref_rejected_logps": -4.0},
                 {"chosen_logps": -6.0, "rejected_logps": -2.0, "ref_chosen_logps": -5.0, "ref_rejected_logps": -3.0}]
        return task, task.score(pairs, Dataset.from_dict({"x": [1, 2]}))
    if task_name == "mlm":
        return task, task.score([{"nll": 2.0, "tokens": 3}, {"nll": 1.0, "tokens": 2}], Dataset.from_dict({"x": [1, 2]}))
    if task_name in ("clm", "chat"):  # prompt/completion data: perplexity and the generation metrics
        generated = [{"nll": 2.0, "tokens": 3, "generated_text": "a cat sat", "gen_len": 4},
                     {"nll": 1.0, "tokens": 2, "generated_text": "dogs", "gen_len": 2}]
        if task_name == "clm":
            raw = Dataset.from_dict({"prompt": ["p1", "p2"], "completion": ["a cat sat", "dogs run"]})
        else:
            from adapt.assets import resolve_model_path

            task.load_tokenizer(resolve_model_path(task.recipe.model))
            raw = Dataset.from_dict({"messages": [
                [{"role": "user", "content": "p1"}, {"role": "assistant", "content": "a cat sat"}],
                [{"role": "user", "content": "p2"}, {"role": "assistant", "content": "dogs run"}]]})
        return task, task.score(generated, task.normalize(raw, "hand-made"))
    predictions = [{"generated_text": "a cat sat", "generated_tokens": 3}, {"generated_text": "dogs", "generated_tokens": 1}]
    return task, task.score(predictions, Dataset.from_dict({"references": [["a cat sat"], ["dogs run"]]}))


@pytest.mark.parametrize("task_name,overrides", [
    ("classification", [("task_options.problem_type", "single_label_classification")]),
    ("classification", [("task_options.problem_type", "multi_label_classification")]),
    ("classification", [("task_options.problem_type", "regression")]), ("ner", ()), ("qa", ()), ("qa", [("task_options.version_2_with_negative", True)]),
    ("clm", ()), ("seq2seq", ()), ("seq2seq", [("train.metric_for_best", "bleu")]), ("mlm", ()),
    ("chat", ()), ("dpo", ()),
])
def test_declared_metric_names_are_what_score_reports(task_name, overrides):
    task, scores = scored(task_name, overrides)
    assert set(TASKS) == {"classification", "ner", "qa", "clm", "seq2seq", "mlm", "chat", "dpo"}
    assert task.default_metric in task.metric_names
    for name in task.metric_names:
        assert isinstance(scores[name], (int, float)), (name, scores)
        recipe = task.recipe.model_copy(update={"train": task.recipe.train.model_copy(update={"metric_for_best": name})})
        preflight.check_metric(recipe, task)  # every declared name is accepted


def test_seq2seq_family_decides_the_metric_names():
    task = get_task(resolve_recipe("summarize", [("task_options.metric_family", "rouge"), ("train.metric_for_best", "bleu")]))
    with pytest.raises(AdaptError, match="train.metric_for_best 'bleu' is not a metric of task 'seq2seq'; use one of rouge1"):
        preflight.check_metric(task.recipe, task)


# ---- model limits per task and family -------------------------------------------------------------------------
def test_position_limits_of_model_families():
    from transformers import BartConfig, BertConfig, EncoderDecoderConfig, GPT2Config, RobertaConfig, T5Config

    assert preflight.position_limits(BertConfig(max_position_embeddings=512)) == {"model": 512}
    assert preflight.position_limits(RobertaConfig(max_position_embeddings=514, pad_token_id=1)) == {"model": 512}
    assert preflight.position_limits(GPT2Config(n_positions=32)) == {"model": 32}
    assert preflight.position_limits(T5Config()) == {"encoder": None, "decoder": None}  # relative positions
    assert preflight.position_limits(BartConfig(max_position_embeddings=64)) == {"encoder": 64, "decoder": 64}
    pair = EncoderDecoderConfig.from_encoder_decoder_configs(BertConfig(max_position_embeddings=128),
                                                             BertConfig(max_position_embeddings=64))
    assert preflight.position_limits(pair) == {"encoder": 128, "decoder": 64}


def test_clm_block_size_and_seq2seq_target_length_are_checked(tmp_path):
    from transformers import BartConfig, GPT2Config

    text = tmp_path / "corpus.txt"
    task = get_task(resolve_recipe("clm", [("data.train", str(text)), ("task_options.block_size", 64)]))
    with pytest.raises(AdaptError, match=r"task_options\.block_size=64 is longer than the model .* \(32 positions; .*at most 32"):
        preflight.check_lengths(task.recipe, task, GPT2Config(n_positions=32))
    pairs = Dataset.from_dict({"prompt": ["a"], "completion": ["b"]})  # prompt/completion data: max_length applies
    preflight.check_lengths(task.recipe.model_copy(update={"train": task.recipe.train.model_copy(update={"max_length": 32})}),
                            task, GPT2Config(n_positions=32), {"train": pairs})
    task = get_task(resolve_recipe("summarize", [("train.max_length", 64), ("task_options.max_target_length", 100)]))
    with pytest.raises(AdaptError, match=r"task_options\.max_target_length=100 is longer than the decoder of the model"):
        preflight.check_lengths(task.recipe, task, BartConfig(max_position_embeddings=64))


def test_data_inspect_and_estimate_refuse_what_finetune_refuses(tmp_path, tiny_bert, sentiment_csv, adapt_cache):
    for command in (["data", "inspect"], ["estimate"]):
        result = CliRunner().invoke(app, [*command, "--model", str(tiny_bert), "--data", str(sentiment_csv),
                                          "train.max_length=4096", "tracking=[]"])
        assert_refused(result, "train.max_length=4096 is longer than the model")


def test_every_task_declares_metric_names():
    import importlib

    for path in TASKS.values():
        module, cls = path.split(":")
        task_class = getattr(importlib.import_module(module), cls)
        assert task_class.default_metric in task_class.metric_names, task_class


def test_tokenizer_with_shipped_code_needs_the_flag(tmp_path, tiny_bert, sentiment_csv):
    folder = model_folder(tmp_path, tiny_bert, "custom_tokenizer")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "auto_map": {"AutoTokenizer": ["tok.T", None]}}))
    result, out = finetune(tmp_path, folder, sentiment_csv)
    assert_refused(result, "the tokenizer runs code shipped with the model (auto_map)", "trust_remote_code=true")
    assert not out.exists()


def test_adapter_folder_with_pickled_weights(tmp_path, tiny_bert, sentiment_csv):
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tiny_bert)}))
    (folder / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(AdaptError, match=r"the adapter has no adapter_model\.safetensors; adapt loads only safetensors"):
        preflight.check_model_files(str(folder), "model", False)


def test_recipe_key_given_twice(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("task: classification\nmodel: m\ntrain:\n  lr: 0.1\ntrain:\n  epochs: 2\n")
    with pytest.raises(AdaptError) as err:
        resolve_recipe(str(path))
    assert str(err.value) == f"{path}: line 5: key 'train' is given twice (also on line 3); keep one"


def test_output_dir_that_cannot_be_written(tmp_path, monkeypatch):
    """A read-only parent (simulated: tests may run as root, for whom every folder is writable)."""
    denied = tmp_path / "shared"
    denied.mkdir()
    real_access = preflight.os.access
    monkeypatch.setattr(preflight.os, "access", lambda path, mode: Path(path) != denied and real_access(path, mode))
    with pytest.raises(AdaptError) as err:
        preflight.check_output_dir(denied / "runs" / "x")
    assert str(err.value) == (f"output_dir {denied / 'runs' / 'x'} would be created in {denied}, which is not "
                              "writable by this user; choose a writable --output-dir or fix its permissions")
    with pytest.raises(AdaptError, match=rf"output_dir {denied} is not writable by this user"):
        preflight.check_output_dir(denied)
    assert sorted(denied.iterdir()) == []  # nothing created
    preflight.check_output_dir(tmp_path / "fine" / "run")
    assert not (tmp_path / "fine").exists()


# ---- wave 2 (W-B): override values and their errors ------------------------------------------------------
def test_an_override_value_starting_with_hash_is_literal_text_not_a_comment():
    assert parse_overrides(["data.columns.text=#1 String", "data.columns.label=tag # note",
                            'data.columns.target="#quoted"', "data.validation=null", "data.test=~"]) == [
        ("data.columns.text", "#1 String"), ("data.columns.label", "tag # note"),
        ("data.columns.target", "#quoted"), ("data.validation", None), ("data.test", None)]
    recipe = resolve_with_flags("pairs", {}, ["data.columns.text=#1 String", "data.columns.text_pair=#2 String"])
    assert (recipe.data.columns.text, recipe.data.columns.text_pair) == ("#1 String", "#2 String")


@pytest.mark.parametrize("override, message", [
    ("train.lr=.inf", "override train.lr=.inf: bad value for 'train.lr': Input should be a finite number"),
    ("train.seed=true", "override train.seed=true: bad value for 'train.seed': Input should be a number, not true"),
    ("train.epochs=false",
     "override train.epochs=false: bad value for 'train.epochs': Input should be a number, not false"),
    # (a text key such as data.columns.text takes `[a, b]` literally since issue 19: tests/test_ship.py)
    ("data.label_names={a: b}",
     "override data.label_names={a: b}: bad value for 'data.label_names': Input should be a valid list"),
    ("=5", "override '=5' has no key before =; write section.key=value (e.g. train.lr=3e-5)"),
    ("train..lr=1", "override 'train..lr=1' has no key part between dots; write section.key=value (e.g. "
                    "train.lr=3e-5)"),
])
def test_a_bad_override_is_blamed_on_the_override_not_the_recipe_file(override, message):
    with pytest.raises(AdaptError) as err:
        resolve_with_flags("sentiment", {}, [override])
    assert str(err.value) == message


def test_a_bad_flag_value_is_blamed_on_the_flag():
    with pytest.raises(AdaptError) as err:
        resolve_with_flags("sentiment", {"max_steps": 0}, [])
    assert str(err.value) == "--max-steps 0: bad value for 'train.max_steps': Input should be greater than or equal to 1"


def test_booleans_are_refused_for_numbers_but_every_shipped_recipe_still_loads():
    from adapt.recipe import available_recipes

    for name in available_recipes():
        assert resolve_recipe(name).name
    assert resolve_with_flags("sentiment", {}, ["train.seed=7", "train.lr=1"]).train.seed == 7
    assert resolve_with_flags("sentiment", {}, ["trust_remote_code=true"]).trust_remote_code is True


def test_finetune_on_conll_without_blank_lines_says_why_it_is_one_sentence(tmp_path, tiny_bert):
    conll = tmp_path / "noblank.txt"
    conll.write_text("John B-PER\nSmith I-PER\nlives O\nin O\nParis B-LOC\n", encoding="utf-8")
    result, out = finetune(tmp_path, tiny_bert, conll, recipe="ner")
    assert_refused(result, f"{conll}: holds 1 example, too few to carve a validation split from (need at least 2): "
                           "its 5 lines have no blank line between them, so they read as one sentence",
                   "add a blank line after each sentence or give --validation FILE")
    assert not out.exists()
