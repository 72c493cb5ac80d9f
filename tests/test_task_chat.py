"""Chat task: conversation forms (OpenAI messages, ShareGPT, HH-RLHF text), assistant-only loss from the chat
template, packing without cross-conversation attention, bad conversations refused by row, and a saved folder
that `pipeline("text-generation")` chats with through the saved template."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_llama, smollm2_dir
from typer.testing import CliRunner

from adapt.cli import app
from adapt.conversation import (ConversationError, assistant_spans, parse_hh_dialogue, target_mask,
                                to_messages)
from adapt.errors import AdaptError
from adapt.recipe import resolve_recipe
from adapt.tasks import get_task
from adapt.train import finetune

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
HH = SHARED / "hh_rlhf" / "harmless-base" / "test.jsonl.gz"

# a ChatML template without SmolLM2's default system turn, so the saved folder's template is recognisably this one
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# Mistral-style: refuses turns that do not alternate user/assistant
STRICT_TEMPLATE = ("{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
                   "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant') }}"
                   "{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                   "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

THREE_TURNS = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello friend"},
    {"role": "user", "content": "How are you?"},
    {"role": "assistant", "content": "Very well"},
]


def _tiny_llama(folder: Path, template: str | None) -> Path:
    return build_tiny_llama(folder, chat_template=template)


@pytest.fixture(scope="module")
def tiny_chat(tmp_path_factory) -> Path:
    """A tiny random Llama with SmolLM2's vocabulary and the ChatML `TEMPLATE`."""
    return _tiny_llama(tmp_path_factory.mktemp("tiny-chat"), TEMPLATE)


def make_task(model: Path, overrides=()):
    task = get_task(resolve_recipe("chat", [("model", str(model)), ("tracking", []), *overrides]))
    task.load_tokenizer(str(model))
    return task


def normalized(task, conversations: list):
    """Conversations (lists of OpenAI-form turns) as `Chat.normalize` gives them to `featurize`."""
    from datasets import Dataset

    return task.normalize(Dataset.from_dict({"messages": conversations}), "conversations.jsonl")


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def conversations(n: int = 24) -> list[dict]:
    """n OpenAI-form conversations of 1 or 2 exchanges."""
    rows = []
    for i in range(n):
        messages = [{"role": "user", "content": f"What is {i} plus {i}?"},
                    {"role": "assistant", "content": f"It is {2 * i}."}]
        if i % 2:
            messages += [{"role": "user", "content": "Thanks!"}, {"role": "assistant", "content": "You are welcome."}]
        rows.append({"messages": messages})
    return rows


# ---- conversation forms -------------------------------------------------------------------------------------
def test_sharegpt_turns_map_to_openai_roles():
    sharegpt = [{"from": "system", "value": "Be nice."}, {"from": "human", "value": "Hi"},
                {"from": "gpt", "value": "Hello", "markdown": None}]
    assert to_messages(sharegpt) == [{"role": "system", "content": "Be nice."}, {"role": "user", "content": "Hi"},
                                     {"role": "assistant", "content": "Hello"}]


def test_hh_dialogue_is_cut_at_paragraph_markers_only():
    text = ("\n\nHuman: what does Human: mean here?\n\nAssistant: It is just text.\n\nHuman: ok\n\n"
            "Assistant:  Bye.")
    assert parse_hh_dialogue(text) == [
        {"role": "user", "content": "what does Human: mean here?"}, {"role": "assistant", "content": "It is just text."},
        {"role": "user", "content": "ok"}, {"role": "assistant", "content": "Bye."}]
    with pytest.raises(ConversationError, match="turn 2 is an empty assistant turn"):
        parse_hh_dialogue("\n\nHuman: hi\n\nAssistant: ")
    with pytest.raises(ConversationError, match="no .*Human:"):
        parse_hh_dialogue("just some text")


def test_target_mask_marks_tokens_starting_inside_a_span():
    assert target_mask([(0, 5), (5, 7), (7, 9), (9, 12)], [(5, 9)]) == [False, True, True, False]
    assert target_mask([(0, 2), (2, 4), (4, 6)], [(0, 2), (4, 6)]) == [True, False, True]


# ---- assistant-only loss (acceptance 4) ----------------------------------------------------------------------
def test_three_turn_conversation_trains_on_exactly_the_two_assistant_replies(tiny_chat, tmp_path):
    task = make_task(tiny_chat)
    raw = normalized(task, [THREE_TURNS])
    row = task.featurize(raw, "train")[0]
    tok = task.tokenizer
    assert tok.decode(row["input_ids"]) == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
        "<|im_start|>assistant\nHello friend<|im_end|>\n<|im_start|>user\nHow are you?<|im_end|>\n"
        "<|im_start|>assistant\nVery well<|im_end|>\n")
    targets = [t for t in row["labels"] if t != -100]
    # hand count: "Hello" " friend" <|im_end|> and "Very" " well" <|im_end|>: 6 tokens, the newline after
    # each <|im_end|> and every system/user/header token excluded
    assert tok.convert_ids_to_tokens(targets) == ["Hello", "Ġfriend", "<|im_end|>", "Very", "Ġwell", "<|im_end|>"]
    assert len(targets) == 6
    # targets are the input ids at their own positions; the batch's loss counts exactly them
    assert all(label in (-100, ids) for label, ids in zip(row["labels"], row["input_ids"]))
    batch = task.collate(task.featurize(raw, "train")[:1])
    assert task.count_targets(batch) == 6


def test_sharegpt_and_hh_forms_give_the_features_of_the_same_messages(tiny_chat, tmp_path):
    openai = write_jsonl(tmp_path / "openai.jsonl", [{"messages": THREE_TURNS[1:]}])
    sharegpt = tmp_path / "sharegpt.json"
    sharegpt.write_text(json.dumps([{"id": "a", "conversations": [
        {"from": "human", "value": "Hi there"}, {"from": "gpt", "value": "Hello friend"},
        {"from": "human", "value": "How are you?"}, {"from": "gpt", "value": "Very well"}]}]))
    hh = write_jsonl(tmp_path / "hh.jsonl", [{"chosen": "\n\nHuman: Hi there\n\nAssistant: Hello friend\n\nHuman: "
                                                        "How are you?\n\nAssistant: Very well", "rejected": "x"}])
    task = make_task(tiny_chat)
    features = [task.featurize(task.read_source(str(p), "train"), "train")[0] for p in (openai, sharegpt, hh)]
    assert features[0]["input_ids"] == features[1]["input_ids"] == features[2]["input_ids"]
    assert features[0]["labels"] == features[1]["labels"] == features[2]["labels"]


def test_messages_column_names_a_column_of_turns_or_of_hh_text(tiny_chat, tmp_path):
    turns = write_jsonl(tmp_path / "turns.jsonl", [{"dialog": THREE_TURNS[1:3], "messages": "ignored"}])
    text = write_jsonl(tmp_path / "text.jsonl", [{"dialog": "\n\nHuman: Hi there\n\nAssistant: Hello friend"}])
    task = make_task(tiny_chat, [("task_options.messages_column", "dialog")])
    assert task.read_source(str(turns), "train")["messages"] == task.read_source(str(text), "train")["messages"] == [
        THREE_TURNS[1:3]]


def test_conversations_are_cut_to_max_length_from_the_right(tiny_chat):
    task, short = make_task(tiny_chat), make_task(tiny_chat, [("train.max_length", 20)])
    full = task.featurize(normalized(task, [THREE_TURNS]), "train")[0]
    cut = short.featurize(normalized(short, [THREE_TURNS]), "train")[0]
    assert cut["input_ids"] == full["input_ids"][:20] and cut["labels"] == full["labels"][:20]
    assert cut["length"] == 20 and len(full["input_ids"]) > 20


def test_generation_prompts_answer_the_last_user_turn(tiny_chat):
    task = make_task(tiny_chat)
    raw = normalized(task, [THREE_TURNS])
    prompt = task.tokenizer.apply_chat_template(THREE_TURNS[:-1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("How are you?<|im_end|>\n<|im_start|>assistant\n") and task.references(raw) == ["Very well"]
    assert task.featurize(raw, "test")[0]["prompt_ids"] == task.tokenizer(prompt, add_special_tokens=False)["input_ids"]


def test_a_template_that_rewrites_earlier_turns_is_refused(tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir())
    # writes the number of turns at the top: every added turn changes the text before it
    tokenizer.chat_template = ("{{ messages | length }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n"
                               "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}")
    with pytest.raises(ConversationError, match="does not render turn 2 .assistant. by appending"):
        assistant_spans(tokenizer, THREE_TURNS[1:3])


# ---- packing without cross-conversation attention -------------------------------------------------------------
def test_padding_free_packed_batch_loss_equals_the_conversations_one_by_one(tiny_chat):
    from transformers import AutoModelForCausalLM

    from adapt.speed import padding_free

    task = make_task(tiny_chat)
    rows = conversations(3) + [{"messages": THREE_TURNS}]
    features = task.featurize(normalized(task, [r["messages"] for r in rows]), "train")
    assert len(set(features["length"])) > 1  # right padding in the batch
    packed_model = AutoModelForCausalLM.from_pretrained(tiny_chat, attn_implementation="sdpa").eval()
    assert padding_free.install(packed_model)
    seen = []
    packed_model.base_model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw.get("cu_seq_lens_q")),
                                                      with_kwargs=True)
    plain = AutoModelForCausalLM.from_pretrained(tiny_chat, attn_implementation="sdpa").eval()
    batch = task.collate(features[:])
    with torch.no_grad():
        loss, targets = task.loss(packed_model, batch)
        alone = [task.loss(plain, task.collate(features[i:i + 1])) for i in range(len(features))]
    # the batch ran as one packed row of the real tokens, with one sequence per conversation
    assert seen[0] is not None and seen[0].tolist() == [0, *torch.tensor(features["length"]).cumsum(0).tolist()]
    assert int(targets) == sum(int(t) for _, t in alone)
    torch.testing.assert_close(loss, sum(l for l, _ in alone), atol=1e-4, rtol=1e-5)


# ---- bad input ---------------------------------------------------------------------------------------------
def run_finetune(model: Path, data: Path, out: Path, *args: str):
    return CliRunner().invoke(app, ["finetune", "--recipe", "chat", "--model", str(model), "--data", str(data),
                                    "--output-dir", str(out), "--max-steps", "1", "tracking=[]", *args])


def assert_user_error(result, out: Path, *fragments: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip() and "%|" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert not out.exists()


GOOD = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}


@pytest.mark.parametrize("bad,fragments", [
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "bot", "content": "Hello"}]},
     ["line 3: turn 2 has the unknown role 'bot'; use one of system, user, assistant"]),
    ({"conversations": [{"from": "human", "value": "Hi"}, {"from": "robot", "value": "Hello"}]},
     ["line 3: turn 2 has the unknown from 'robot'; use one of system, human, user, gpt, assistant"]),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "  "}]},
     ["line 3: turn 2 is an empty assistant turn"]),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                   {"role": "user", "content": "And?"}]},
     ["line 3: the conversation ends on a user turn", "must end with an assistant reply"]),
    ({"messages": []}, ["line 3: the conversation is empty"]),
    # another row's list of turns made the column a list: the table reader names the row
    ({"messages": "Hi, hello"}, ["line 3: field 'messages' is string", "but list of object on line 1"]),
    ({"messages": [{"text": "Hi"}]}, ["line 3: turn 1 has neither role/content (OpenAI form) nor from/value"]),
    ({"chosen": "Human: hi\n\nAssistant: "}, ["line 3: turn 2 is an empty assistant turn (column 'chosen')"]),
])
def test_bad_conversations_name_their_line(tiny_chat, tmp_path, adapt_cache, bad, fragments):
    key = next(iter(bad))
    good = GOOD if key != "chosen" else {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello"}
    if key == "conversations":
        good = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}
    data = write_jsonl(tmp_path / "chat.jsonl", [good, good, bad, good])
    result = run_finetune(tiny_chat, data, tmp_path / "out")
    fix = [] if isinstance(bad[key], str) and key == "messages" else ["fix or remove that conversation"]
    assert_user_error(result, tmp_path / "out", f"{data}: ", *fragments, *fix)


def test_a_conversation_that_is_not_a_list_in_every_row_is_refused(tiny_chat, tmp_path, adapt_cache):
    data = write_jsonl(tmp_path / "chat.jsonl", [{"messages": "Hi"}, {"messages": "Hello"}])
    assert_user_error(run_finetune(tiny_chat, data, tmp_path / "out"), tmp_path / "out",
                      f"{data}: line 1: the conversation is a string, not a list of turns (column 'messages')")


def test_turns_the_template_refuses_name_their_line(tmp_path, adapt_cache):
    model = _tiny_llama(tmp_path / "strict", STRICT_TEMPLATE)
    two_users = {"messages": [{"role": "user", "content": "Hi"}, {"role": "user", "content": "Hello?"},
                              {"role": "assistant", "content": "Yes"}]}
    data = write_jsonl(tmp_path / "chat.jsonl", [GOOD, two_users])
    assert_user_error(run_finetune(model, data, tmp_path / "out"), tmp_path / "out",
                      f"{data}: line 2: the tokenizer's chat template refuses it (Conversation roles must alternate")


def test_a_tokenizer_without_chat_template_is_refused(tmp_path, adapt_cache):
    model = _tiny_llama(tmp_path / "plain", None)
    data = write_jsonl(tmp_path / "chat.jsonl", [GOOD] * 4)
    assert_user_error(run_finetune(model, data, tmp_path / "out"), tmp_path / "out",
                      f"the tokenizer of {model} has no chat template")


def test_data_without_a_conversation_column_is_refused(tiny_chat, tmp_path, adapt_cache):
    data = write_jsonl(tmp_path / "chat.jsonl", [{"prompt": "Hi", "completion": "Hello"}] * 4)
    assert_user_error(run_finetune(tiny_chat, data, tmp_path / "out"), tmp_path / "out",
                      f"{data}: no column 'messages' or 'conversations'", "task_options.messages_column=NAME")


def test_clm_only_options_are_unknown_for_chat(tiny_chat):
    with pytest.raises(AdaptError, match="unknown key 'block_size' for task 'chat'"):
        make_task(tiny_chat, [("task_options.block_size", 64)])


def test_drop_invalid_rows_skips_them_with_a_note(tiny_chat, tmp_path, capsys):
    bad = {"messages": [{"role": "user", "content": "Hi"}]}
    data = write_jsonl(tmp_path / "chat.jsonl", [GOOD, bad, GOOD, bad])
    task = make_task(tiny_chat, [("task_options.drop_invalid_rows", True)])
    raw = task.read_source(str(data), "train")
    assert len(raw) == 2 and raw[0]["messages"] == GOOD["messages"]
    assert (f"note: {data}: skipped 2 of 4 conversations that cannot train (line 2, line 4; "
            "task_options.drop_invalid_rows); the first: the conversation ends on a user turn") in capsys.readouterr().err


# ---- end to end: train, save, chat -----------------------------------------------------------------------------
def test_finetune_saves_the_template_and_the_pipeline_chats(tiny_chat, tmp_path, adapt_cache):
    from transformers import AutoTokenizer, pipeline

    run = tmp_path / "run"
    data = write_jsonl(tmp_path / "chat.jsonl", conversations(24))
    final = finetune(resolve_recipe("chat", [
        ("model", str(tiny_chat)), ("data.train", str(data)), ("train.max_steps", 3), ("train.batch_size", 4),
        ("train.lr", 1e-3), ("train.max_length", 128), ("task_options.max_new_tokens", 4),
        ("output_dir", str(run)), ("tracking", [])]))
    validation = final["validation"]
    assert math.isfinite(validation["perplexity"]) and validation["generated_examples"] == 3
    assert 0 <= validation["bleu"] <= 100
    # the saved tokenizer carries this template, and the pipeline renders messages with it
    assert (run / "chat_template.jinja").read_text() == TEMPLATE
    assert AutoTokenizer.from_pretrained(run).chat_template == TEMPLATE
    chat = pipeline("text-generation", model=str(run))
    two_turns = [{"role": "user", "content": "What is 2 plus 2?"}, {"role": "assistant", "content": "It is 4."},
                 {"role": "user", "content": "And 3 plus 3?"}]
    answer = chat(two_turns, max_new_tokens=5, do_sample=False)[0]["generated_text"]
    assert answer[:3] == two_turns and answer[3]["role"] == "assistant" and isinstance(answer[3]["content"], str)
    # `adapt predict` answers a plain line (one user turn) and a JSON conversation (its last reply regenerated)
    line = json.dumps({"messages": two_turns[:2]})
    result = CliRunner().invoke(app, ["predict", "--model", str(run), "--max-new-tokens", "3", "Hello", line])
    assert result.exit_code == 0, result.output
    records = [json.loads(r) for r in result.stdout.splitlines() if r.startswith("{")]
    assert [r["input"]["messages"] for r in records] == [[{"role": "user", "content": "Hello"}], two_turns[:1]]
    assert all(isinstance(r["generated_text"], str) for r in records)
    # `adapt eval` scores a conversation file: assistant-token perplexity and every reply generated
    result = CliRunner().invoke(app, ["eval", "--model", str(run), "--data", str(data), "--json"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)["scores"]["model"]
    assert math.isfinite(scores["perplexity"]) and scores["generated_examples"] == 24


def test_lora_run_saves_an_adapter_with_the_template_and_answers(tiny_chat, tmp_path, adapt_cache):
    run = tmp_path / "run"
    finetune(resolve_recipe("chat", [
        ("model", str(tiny_chat)), ("data.train", str(write_jsonl(tmp_path / "chat.jsonl", conversations(12)))),
        ("train.max_steps", 2), ("train.batch_size", 4), ("train.max_length", 128), ("peft", {"method": "lora"}),
        ("task_options.generation_metrics", False), ("output_dir", str(run)), ("tracking", [])]))
    assert (run / "adapter_model.safetensors").exists() and not (run / "model.safetensors").exists()
    assert (run / "chat_template.jinja").read_text() == TEMPLATE
    result = CliRunner().invoke(app, ["predict", "--model", str(run), "--max-new-tokens", "3", "Hello"])
    assert result.exit_code == 0, result.output
    assert isinstance(json.loads(result.stdout.splitlines()[-1])["generated_text"], str)


def test_predict_input_errors_name_the_input(tiny_chat):
    task = make_task(tiny_chat)
    with pytest.raises(AdaptError, match=r"^input 2: the JSON object has no conversation column \(keys: prompt\)"):
        task.inputs_from_texts(["Hi", json.dumps({"prompt": "Hello"})])
    with pytest.raises(AdaptError, match=r"^input 1: turn 1 has the unknown role 'robot'"):
        task.inputs_from_texts([json.dumps({"messages": [{"role": "robot", "content": "x"}]})])


@pytest.mark.skipif(not HH.exists(), reason="shared HH-RLHF data not present")
def test_hh_rlhf_chosen_side_reads_with_its_empty_replies_skipped(tiny_chat, capsys):
    task = make_task(tiny_chat, [("task_options.drop_invalid_rows", True)])
    raw = task.read_source(str(HH), "train")
    assert len(raw) == 2312 - 4  # 4 chosen dialogues end on an empty assistant turn (SOURCE.md counts 2,312)
    assert "skipped 4 of 2312 conversations" in capsys.readouterr().err
    with pytest.raises(AdaptError, match=r"test.jsonl.gz: line 87: turn 4 is an empty assistant turn"):
        make_task(tiny_chat).read_source(str(HH), "train")


@pytest.mark.skipif(not (SHARED / "fastchat_dummy_conversation").exists(), reason="shared FastChat data not present")
def test_fastchat_sharegpt_file_reads_every_conversation(tiny_chat):
    task = make_task(tiny_chat)
    raw = task.read_source(str(SHARED / "fastchat_dummy_conversation" / "dummy_conversation.json"), "train")
    roles = [m["role"] for conversation in raw["messages"] for m in conversation]
    # SOURCE.md: 500 conversations, 1,000 human and 1,000 gpt messages, no system message
    assert len(raw) == 500 and roles.count("user") == roles.count("assistant") == 1000 and len(roles) == 2000
    assert raw[0]["messages"][:2] == [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": (
        "I am Vicuna, a language model trained by researchers from Large Model Systems Organization (LMSYS).")}]
