"""DPO task: HH-RLHF and TRL-format pairs, TRL-equal tokenization, loss and gradients equal to TRL's DPOTrainer on a
fixed batch (with the speed layer's padding-free forward), the adapter-disabled reference under LoRA, metrics, bad
input, and short runs of a tiny random Llama whose output loads in transformers/peft."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_llama
from test_bad_input import is_progress_bar
from datasets import Dataset
from typer.testing import CliRunner

from adapt import speed
from adapt.cli import app
from adapt.errors import AdaptError
from adapt.recipe import resolve_recipe
from adapt.tasks import get_task
from adapt.tasks.preference import PairError, dpo_loss, hh_messages, hh_split, sequence_logps
from adapt.train import build_training_model, finetune

CONVERSATIONS = [
    {"prompt": [{"role": "user", "content": "What colour is the sky?"}],
     "chosen": [{"role": "assistant", "content": "Blue, on a clear day."}],
     "rejected": [{"role": "assistant", "content": "Green."}]},
    {"prompt": [{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "Which size?"},
                {"role": "user", "content": "Small."}],
     "chosen": [{"role": "assistant", "content": "Seven."}],
     "rejected": [{"role": "assistant", "content": "Nine, which is odd but not prime at all."}]},
    {"prompt": [{"role": "user", "content": "Say hi."}],
     "chosen": [{"role": "assistant", "content": "Hi!"}],
     "rejected": [{"role": "assistant", "content": "No."}]},
]
TEXTS = [
    {"prompt": "Q: 2 + 2 =", "chosen": " 4", "rejected": " 5, or so I think"},
    {"prompt": "The capital of France is", "chosen": " Paris.", "rejected": " a mystery to me and everyone else."},
    {"prompt": "Translate 'chat':", "chosen": " cat", "rejected": " dog"},
]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    """A random 2-layer Llama (hidden 32) with SmolLM2's tokenizer (which has a chat template)."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), max_position_embeddings=512)


def make_task(model_dir, overrides=()):
    recipe = resolve_recipe("dpo", [("model", str(model_dir)), ("tracking", []), ("peft", None),
                                    ("task_options.chat_template", False), ("task_options.max_prompt_length", None),
                                    ("task_options.drop_invalid_rows", False), *overrides])
    task = get_task(recipe)
    task.load_tokenizer(str(model_dir))
    return task


def hh(*turns: str) -> str:
    return "".join(f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {t}" for i, t in enumerate(turns))


# ---- data formats ------------------------------------------------------------------------------------
def test_hh_split_takes_the_shared_dialogue_up_to_its_last_assistant_marker():
    chosen, rejected = hh("Hi", "Hello", "Tell me a joke", "Why did the hen cross?"), hh("Hi", "Hello", "Tell me a joke", "No.")
    prompt, c, r = hh_split(chosen, rejected)
    assert prompt == "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Tell me a joke\n\nAssistant:"
    assert (c, r) == (" Why did the hen cross?", " No.")
    from trl import extract_prompt  # responses differing from their first word: TRL's split is the same

    assert extract_prompt({"chosen": chosen, "rejected": rejected}) == {"prompt": prompt, "chosen": c, "rejected": r}
    # shared first words stay in the responses here (TRL would move " I" into the prompt)
    assert hh_split(hh("Q", "I agree."), hh("Q", "I refuse."))[1:] == (" I agree.", " I refuse.")


def test_hh_dialogues_become_chat_messages():
    assert hh_messages(hh("Hi", "Hello  ", "Bye")) == [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"}]


def test_hh_messages_is_the_chat_parser_keeping_blank_turns_and_refusing_non_dialogues():
    """One HH-RLHF parser (adapt.conversation): the DPO side keeps a blank final reply (its pair check refuses
    an empty response later, naming chosen/rejected) where the chat side refuses it at once."""
    from adapt.conversation import ConversationError, parse_hh_dialogue
    text = "Human: what does Human: mean?\n\nAssistant: Just text."  # the leading blank line may be missing
    assert hh_messages(text) == parse_hh_dialogue(text) == [
        {"role": "user", "content": "what does Human: mean?"}, {"role": "assistant", "content": "Just text."}]
    assert hh_messages(hh("Q", "")) == [{"role": "user", "content": "Q"}, {"role": "assistant", "content": ""}]
    with pytest.raises(ConversationError, match="turn 2 is an empty assistant turn"):
        parse_hh_dialogue(hh("Q", ""))
    with pytest.raises(PairError, match="no prompt column, and the text is not an HH-RLHF dialogue: .*no "):
        hh_messages("Just some text")
    with pytest.raises(PairError, match="text before its first"):
        hh_messages("Preamble" + hh("Q", "A"))
    with pytest.raises(PairError, match="has no '\\\\n\\\\nAssistant:' turn"):
        hh_messages(hh("Q"))


def test_tokenized_pairs_equal_trl_for_messages_text_and_hh(tiny_llama, tmp_path):
    """prompt_ids / chosen_ids / rejected_ids as TRL's DPOTrainer tokenizes the same rows (conversational: chat
    template; text: EOS appended; HH text with responses differing from their first character)."""
    trl = pytest.importorskip("trl")
    from transformers import AutoModelForCausalLM

    hh_rows = [{"chosen": hh("Hi there", "Hello, how can I help?", "A joke please", "Why did the hen cross?"),
                "rejected": hh("Hi there", "Hello, how can I help?", "A joke please", "No.")}]
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    for rows in (CONVERSATIONS, TEXTS, hh_rows):
        task = make_task(tiny_llama)
        features = task.featurize(task.normalize(Dataset.from_list(rows), "rows"), "train")
        config = trl.DPOConfig(output_dir=str(tmp_path / "trl"), report_to=[], use_cpu=True, max_length=512, bf16=False)
        trainer = trl.DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=config,
                                 train_dataset=Dataset.from_list(rows), processing_class=task.tokenizer)
        for ours, theirs in zip(features, trainer.train_dataset):
            p = ours["prompt_length"]
            assert ours["input_ids"][:p] == theirs["prompt_ids"]
            assert ours["input_ids"][p:] == theirs["chosen_ids"]
            assert ours["rejected_input_ids"][p:] == theirs["rejected_ids"]


def test_hh_text_with_the_chat_template_renders_user_and_assistant_turns(tiny_llama):
    task = make_task(tiny_llama, [("task_options.chat_template", True)])
    raw = task.normalize(Dataset.from_list([{"chosen": hh("Hi", "Hello", "Joke?", "Sure."),
                                             "rejected": hh("Hi", "Hello", "Joke?", "No.")}]), "rows")
    row = raw[0]
    assert row["prompt"].endswith("<|im_start|>user\nJoke?<|im_end|>\n<|im_start|>assistant\n")
    assert "<|im_start|>assistant\nHello<|im_end|>" in row["prompt"]
    assert (row["chosen"], row["rejected"], row["templated"]) == ("Sure.<|im_end|>\n", "No.<|im_end|>\n", True)


def test_batches_put_chosen_rows_then_rejected_rows_with_prompt_labels_masked(tiny_llama):
    task = make_task(tiny_llama)
    features = task.featurize(task.normalize(Dataset.from_list(TEXTS[:2]), "rows"), "train")
    batch = task.collate(features[:2])
    assert batch["input_ids"].shape[0] == 4 and task.count_targets(batch) == 2
    eos = task.tokenizer.eos_token
    for row, (text, side) in enumerate([(TEXTS[0], "chosen"), (TEXTS[1], "chosen"), (TEXTS[0], "rejected"),
                                        (TEXTS[1], "rejected")]):
        targets = batch["labels"][row][batch["labels"][row] != -100]
        assert task.tokenizer.decode(targets) == text[side] + eos
        assert int(batch["attention_mask"][row].sum()) == len(task.tokenizer(text["prompt"] + text[side] + eos)["input_ids"])


def test_max_prompt_length_keeps_the_prompts_end_and_max_length_cuts_the_response(tiny_llama):
    task = make_task(tiny_llama, [("task_options.max_prompt_length", 3), ("train.max_length", 8)])
    row = {"prompt": "one two three four five six", "chosen": " seven eight nine ten eleven", "rejected": " no"}
    features = task.featurize(task.normalize(Dataset.from_list([row]), "rows"), "train")[0]
    full = task.tokenizer(row["prompt"])["input_ids"]
    assert features["prompt_length"] == 3 and features["input_ids"][:3] == full[-3:]
    assert len(features["input_ids"]) == 8


# ---- loss -------------------------------------------------------------------------------------------
def test_dpo_loss_by_hand():
    chosen, rejected = torch.tensor([2.0, -1.0]), torch.tensor([1.0, 1.0])
    assert torch.allclose(dpo_loss(chosen, rejected, 0.5), torch.tensor([math.log1p(math.exp(-0.5)),
                                                                           math.log1p(math.exp(1.0))]))
    smoothed = dpo_loss(chosen, rejected, 0.5, label_smoothing=0.1)
    expected = 0.9 * math.log1p(math.exp(-0.5)) + 0.1 * math.log1p(math.exp(0.5))
    assert smoothed[0].item() == pytest.approx(expected, abs=1e-6)
    assert dpo_loss(torch.zeros(3), torch.zeros(3), 0.1).tolist() == pytest.approx([math.log(2)] * 3)


def test_sequence_logps_sum_only_the_response_tokens():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8], [0.2, 0.3, 0.5]]]))
    labels = torch.tensor([[-100, 2, 1]])  # position 0 predicts 2 (0.25), position 1 predicts 1 (0.1)
    assert sequence_logps(logits, labels).item() == pytest.approx(math.log(0.25) + math.log(0.1), abs=1e-6)


@pytest.mark.parametrize("rows", [CONVERSATIONS, TEXTS], ids=["messages", "text"])
def test_loss_and_gradients_equal_trl_dpo_trainer(tiny_llama, tmp_path, rows):
    """Acceptance 5: adapt's loss (summed / pairs, as the loop divides) and every parameter gradient equal
    TRL's DPOTrainer.compute_loss on the same batch within 1e-5; adapt's policy runs padding-free (the speed
    layer's flattened batch), TRL's runs padded with sdpa; both references are frozen copies of the start."""
    trl = pytest.importorskip("trl")
    task = make_task(tiny_llama, [("task_options.beta", 0.5)])
    policy = task.build_model(str(tiny_llama))  # the reference loads from the same folder
    with torch.no_grad():  # move the policy away from the reference, so the loss is not log 2
        generator = torch.Generator().manual_seed(1)
        for param in policy.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    theirs = copy.deepcopy(policy)
    speed.prepare_model(policy, task, task.recipe.train)
    assert policy.config._attn_implementation == "adapt_varlen"
    features = task.featurize(task.normalize(Dataset.from_list(rows), "rows"), "train")
    batch = task.collate(features[:])
    policy.train()
    loss_sum, pairs = task.loss(policy, batch)
    (loss_sum / pairs).backward()

    config = trl.DPOConfig(output_dir=str(tmp_path / "trl"), report_to=[], use_cpu=True, beta=0.5, max_length=512,
                             bf16=False)
    from transformers import AutoModelForCausalLM

    trainer = trl.DPOTrainer(model=theirs, ref_model=AutoModelForCausalLM.from_pretrained(tiny_llama), args=config,
                             train_dataset=Dataset.from_list(rows), processing_class=task.tokenizer)
    trl_batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])
    assert torch.equal(trl_batch["input_ids"], batch["input_ids"])
    theirs.train()
    trl_loss = trainer.compute_loss(theirs, trl_batch)
    trl_loss.backward()
    assert abs(float(loss_sum / pairs) - float(trl_loss)) < 1e-5 and abs(float(trl_loss) - math.log(2)) > 1e-3
    grads = dict(theirs.named_parameters())
    for name, param in policy.named_parameters():
        assert torch.allclose(param.grad, grads[name].grad, atol=1e-5, rtol=0), name


def test_lora_reference_is_the_adapter_disabled_base(tiny_llama):
    from transformers import AutoModelForCausalLM

    task = make_task(tiny_llama, [("peft", {"method": "lora", "r": 4, "alpha": 8})])
    model = build_training_model(task, str(tiny_llama), task.recipe)
    assert task.ref_path is None and task.ref_model is None  # no second copy under LoRA
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    batch = task.collate(task.featurize(task.normalize(Dataset.from_list(TEXTS), "rows"), "train")[:])
    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    with torch.no_grad():
        expected = task.logps(base, batch)
        policy = task.logps(model, batch)
    assert torch.allclose(task.reference_logps(model, batch), expected, atol=1e-5)
    assert not torch.allclose(policy, expected, atol=1e-3)  # the adapter is back on after the reference


# ---- metrics ----------------------------------------------------------------------------------------
def test_metrics_by_hand(tiny_llama):
    task = make_task(tiny_llama, [("task_options.beta", 0.5)])
    predictions = [  # log-ratios (chosen, rejected): (2, 0), (-1, 1), (0, 0)
        {"chosen_logps": -8.0, "rejected_logps": -10.0, "ref_chosen_logps": -10.0, "ref_rejected_logps": -10.0},
        {"chosen_logps": -11.0, "rejected_logps": -9.0, "ref_chosen_logps": -10.0, "ref_rejected_logps": -10.0},
        {"chosen_logps": -5.0, "rejected_logps": -6.0, "ref_chosen_logps": -5.0, "ref_rejected_logps": -6.0},
    ]
    scores = task.score(predictions, None)
    assert scores["rewards/accuracies"] == pytest.approx(1 / 3)  # a tie counts as wrong (TRL)
    assert scores["rewards/chosen"] == pytest.approx((1.0 - 0.5 + 0.0) / 3)
    assert scores["rewards/rejected"] == pytest.approx((0.0 + 0.5 + 0.0) / 3)
    assert scores["rewards/margins"] == pytest.approx((1.0 - 1.0 + 0.0) / 3)
    assert scores["logps/chosen"] == pytest.approx(-8.0) and scores["logps/rejected"] == pytest.approx(-25 / 3)
    expected = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(1.0)) + math.log(2)) / 3
    assert scores["loss"] == pytest.approx(expected) and scores["pairs"] == 3
    assert set(task.metric_names) >= {k for k in scores}
    assert task.greater_is_better and task.default_metric == "rewards/accuracies"


# ---- bad input --------------------------------------------------------------------------------------
def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


GOOD = [{"chosen": hh(f"Question {i}?", f"Answer {i}."), "rejected": hh(f"Question {i}?", "No.")} for i in range(20)]


@pytest.mark.parametrize("bad, fragments", [
    ({"chosen": hh("Q?", "A.")}, ["no column 'rejected'", "task_options.chosen_column"]),
    ({"chosen": hh("Q?", "A."), "rejected": hh("Q?", "A.")}, ["line 3", "chosen and rejected are identical"]),
    ({"chosen": hh("Q?", ""), "rejected": hh("Q?", "No.")}, ["line 3", "the chosen response is empty",
                                                            "task_options.drop_invalid_rows=true"]),
    ({"chosen": "Just some text", "rejected": "Other text"}, ["line 3", "no prompt column", "HH-RLHF dialogue",
                                                             "give a prompt column"]),
    ({"chosen": "\n\nHuman: Q? A", "rejected": "\n\nHuman: Q? B"}, ["line 3", "no '\\n\\nAssistant:' turn"]),
    ({"chosen": hh("Q?", "A."), "rejected": None}, ["line 3", "'rejected' is missing (null)"]),
    ({"chosen": hh(" ".join(["word"] * 300), "A."), "rejected": hh(" ".join(["word"] * 300), "B.")},
     ["line 3", "fills train.max_length=128", "task_options.max_prompt_length"]),
], ids=["missing-rejected", "identical", "empty-response", "not-a-dialogue", "no-assistant-turn", "null", "prompt-fills-max-length"])
def test_bad_pairs_are_one_line_naming_the_row_exit_2(tiny_llama, tmp_path, bad, fragments):
    rows = GOOD[:2] + [bad] + GOOD[2:]
    if "rejected" not in bad:
        rows = [{"chosen": r["chosen"]} for r in rows]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["finetune", "--recipe", "dpo", "--model", str(tiny_llama), "--data", str(data),
                                      "--output-dir", str(out), "--max-steps", "1", "tracking=[]", "train.max_length=128",
                                      "task_options.drop_invalid_rows=false", "task_options.max_prompt_length=null"])
    assert result.exit_code == 2, (result.output, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip() and not is_progress_bar(line)]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert "Traceback" not in result.output and not out.exists()


def test_invalid_pairs_can_be_skipped_with_a_note(tiny_llama, capsys):
    task = make_task(tiny_llama, [("task_options.drop_invalid_rows", True), ("train.max_length", 16)])
    rows = GOOD[:2] + [{"chosen": hh("Q?", ""), "rejected": hh("Q?", "No.")}, {"chosen": hh("A" * 200, "x"),
                                                                                "rejected": hh("A" * 200, "y")}]
    raw = task.normalize(Dataset.from_list(rows), "rows")
    assert len(raw) == 2 and "skipped 2 of 4 pairs that cannot train (record 3, record 4;" in capsys.readouterr().err


def test_messages_with_unknown_roles_and_mixed_formats_are_refused(tiny_llama):
    task = make_task(tiny_llama)
    bad_role = {**CONVERSATIONS[0], "chosen": [{"role": "robot", "content": "Beep."}]}
    with pytest.raises(AdaptError, match="record 1: 'chosen' turn 1 has the unknown role 'robot'"):
        task.normalize(Dataset.from_list([bad_role]), "rows")
    with pytest.raises(AdaptError, match="mixes text and message lists"):
        task.normalize(Dataset.from_list([{**CONVERSATIONS[0], "prompt": "text"}]), "rows")


# ---- runs -------------------------------------------------------------------------------------------
def run_dpo(tiny_llama, tmp_path, overrides=()) -> tuple[Path, dict]:
    run = tmp_path / "run"
    final = finetune(resolve_recipe("dpo", [
        ("model", str(tiny_llama)), ("data.train", str(write_jsonl(tmp_path / "pairs.jsonl", GOOD))),
        ("data.max_train_examples", None), ("train.max_steps", 2), ("train.batch_size", 4), ("train.eval_steps", 2),
        ("train.lr", 5e-3), ("train.max_length", 128), ("train.eval_on_start", True), ("data.validation_fraction", 0.2), ("output_dir", str(run)),
        ("tracking", []), *overrides]))
    return run, final


def test_lora_run_saves_an_adapter_that_loads_in_peft_and_says_dpo(tiny_llama, tmp_path, adapt_cache):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run, final = run_dpo(tiny_llama, tmp_path)
    start = final["initial_validation"]
    assert start["rewards/margins"] == 0.0 and start["rewards/chosen"] == 0.0 and start["rewards/accuracies"] == 0.0
    assert start["loss"] == pytest.approx(math.log(2))
    assert final["validation"]["pairs"] == 4 and final["validation"]["rewards/margins"] != 0.0
    assert (run / "adapter_model.safetensors").exists() and not list(run.glob("*.bin"))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), run)
    assert any("lora_A" in name for name, _ in model.named_parameters())
    card = (run / "README.md").read_text()
    assert "DPO (Rafailov et al. 2023)" in card and "| beta | 0.1 |" in card
    metrics = json.loads((run / "metrics.json").read_text())
    assert "best_rewards/accuracies" in metrics
    assert_eval_scores_pairs(run, tmp_path / "pairs.jsonl")


def assert_eval_scores_pairs(run: Path, pairs: Path) -> dict:
    """`adapt eval --model RUN --data PAIRS` scores every pair with the run's reference (adapter disabled, or the
    recipe's base model loaded again) and reports the DPO metrics."""
    result = CliRunner().invoke(app, ["eval", "--model", str(run), "--data", str(pairs), "--json"])
    assert result.exit_code == 0, (result.output, result.exception)
    scores = json.loads(result.stdout[result.stdout.index("{"):])
    scores = scores["scores"]["model"]
    assert scores["pairs"] == len(GOOD) and scores["rewards/margins"] != 0.0
    assert 0.0 <= scores["rewards/accuracies"] <= 1.0
    return scores


def test_full_fine_tuning_run_keeps_a_frozen_reference_and_saves_the_policy(tiny_llama, tmp_path, adapt_cache):
    from transformers import AutoModelForCausalLM

    run, final = run_dpo(tiny_llama, tmp_path, [("peft", None), ("train.lr", 1e-3)])
    start = final["initial_validation"]  # the reference computes what the untrained policy does: rewards exactly 0
    assert start["rewards/chosen"] == 0.0 and start["rewards/rejected"] == 0.0
    assert final["validation"]["rewards/margins"] != 0.0
    model = AutoModelForCausalLM.from_pretrained(run)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    assert not torch.equal(model.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight)
    assert "frozen copy of" in (run / "README.md").read_text()
    assert_eval_scores_pairs(run, tmp_path / "pairs.jsonl")


# Mistral-style: refuses turns that do not alternate user/assistant
STRICT_TEMPLATE = ("{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
                   "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant') }}"
                   "{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                   "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_a_pair_the_chat_template_refuses_is_one_line_naming_it_or_skipped(tiny_llama, capsys):
    """The template's own refusal (a jinja TemplateError) is the pair's error, not a traceback."""
    two_users = {**CONVERSATIONS[0], "prompt": [{"role": "user", "content": "Hi."}, {"role": "user", "content": "Hi?"}]}
    task = make_task(tiny_llama)
    task.tokenizer.chat_template = STRICT_TEMPLATE
    with pytest.raises(AdaptError, match="^rows: record 2: the tokenizer's chat template refuses it \\(Conversation "
                                         "roles must alternate user/assistant/user/assistant\\) \\(fix or remove"):
        task.normalize(Dataset.from_list([CONVERSATIONS[0], two_users]), "rows")
    task = make_task(tiny_llama, [("task_options.drop_invalid_rows", True)])
    task.tokenizer.chat_template = STRICT_TEMPLATE
    raw = task.normalize(Dataset.from_list([CONVERSATIONS[0], two_users, CONVERSATIONS[2]]), "rows")
    assert len(raw) == 2 and "skipped 1 of 3 pairs that cannot train (record 2;" in capsys.readouterr().err


@pytest.mark.parametrize("row", [
    {"prompt": [{"role": "user", "content": "Say hi."}], "chosen": "Hi!", "rejected": "No."},
    {"prompt": "Say hi.", "chosen": [{"role": "assistant", "content": "Hi!"}],
     "rejected": [{"role": "assistant", "content": "No."}]},
], ids=["message-prompt-text-responses", "text-prompt-message-responses"])
def test_a_pair_mixing_a_message_list_prompt_and_text_responses_is_refused(tiny_llama, row):
    task = make_task(tiny_llama)
    with pytest.raises(AdaptError, match="^rows: record 1: the pair mixes text and message lists"):
        task.normalize(Dataset.from_list([row]), "rows")


def test_pairs_are_tokenized_once_in_one_batched_call(tiny_llama, monkeypatch):
    """normalize makes the ids (and checks the prompt length on them); featurize only cuts them."""
    task = make_task(tiny_llama)
    calls = []
    tokenize = type(task.tokenizer).__call__
    monkeypatch.setattr(type(task.tokenizer), "__call__", lambda tok, *a, **k: calls.append(a[0]) or tokenize(tok, *a, **k))
    features = task.featurize(task.normalize(Dataset.from_list(TEXTS), "rows"), "train")
    assert len(calls) == 1 and len(calls[0]) == 3 * len(TEXTS) and len(features) == len(TEXTS)


def test_full_fine_tuning_reference_is_one_copy_in_the_policys_dtype_reloaded_when_it_changes(tiny_llama):
    from transformers import AutoModelForCausalLM

    task = make_task(tiny_llama)
    policy = task.build_model(str(tiny_llama))
    assert task.ref_model is None and task.ref_path == str(tiny_llama)  # nothing copied before it is needed
    policy.to(torch.bfloat16)  # a bf16 run: the reference is loaded and converted when first needed
    ref = task.reference(policy)
    assert task.reference(policy) is ref and next(ref.parameters()).dtype == torch.bfloat16
    assert not any(p.requires_grad for p in ref.parameters())
    assert ref.config._attn_implementation == "adapt_varlen"  # the speed layer's attention, as the policy's
    policy.to(torch.float32)  # scored in fp32 at the end: the starting weights again, not the bf16-rounded copy
    again = task.reference(policy)
    start = AutoModelForCausalLM.from_pretrained(tiny_llama)
    assert again is not ref and task.ref_model is again
    assert all(torch.equal(p, q) for p, q in zip(again.parameters(), start.parameters()))


def test_peft_model_is_found_under_a_torch_compile_wrapper(tiny_llama):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from adapt.tasks.preference import peft_model

    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    assert peft_model(base) is None
    adapted = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"]))
    assert peft_model(adapted) is adapted and peft_model(torch.compile(adapted)) is adapted
