"""The SFT benchmark (benchmarks/bench_sft.py, sft_peer.py): both systems get the same pairs, the peer tokenizes
them exactly as adapt's clm task does, and the peer times its training steps as adapt does."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
from conftest import build_tiny_llama, smollm2_dir

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_sft  # noqa: E402
import sft_peer  # noqa: E402

RECORDS = [
    {"instruction": "Sort the list.", "input": "[3, 1, 2]", "output": "[1, 2, 3]"},
    {"instruction": "Name a colour.", "input": "", "output": "Blue."},
    {"instruction": "Explain.", "input": "", "output": "   "},  # empty output: left out
    {"instruction": "Reverse the string.", "input": "abc", "output": "cba"},
    {"instruction": "Write hello world in C.", "input": "", "output": 'printf("hello world");'},
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
]


@pytest.fixture
def alpaca_json(tmp_path: Path) -> Path:
    path = tmp_path / "code_alpaca_2k.json"
    path.write_text(json.dumps(RECORDS))
    return path


@pytest.fixture(scope="module")
def smollm2_tokenizer_dir() -> str:
    return smollm2_dir()


def test_pairs_join_instruction_and_input_and_leave_out_empty_outputs(alpaca_json):
    train, validation = bench_sft.instruction_pairs(alpaca_json, 3, 2, seed=42)
    assert (len(train), len(validation)) == (3, 2)
    expected = {"Sort the list.\n\n[3, 1, 2]": "[1, 2, 3]", "Name a colour.": "Blue.",
                "Reverse the string.\n\nabc": "cba", "Write hello world in C.": 'printf("hello world");',
                "Add the numbers.\n\n2 and 3": "5"}
    assert {p["prompt"]: p["completion"] for p in train + validation} == expected  # all 5 usable, each once
    assert bench_sft.instruction_pairs(alpaca_json, 3, 2, seed=42) == (train, validation)  # seeded
    with pytest.raises(SystemExit, match="5 usable records"):
        bench_sft.instruction_pairs(alpaca_json, 5, 1, seed=42)


def test_jsonl_round_trips_through_the_peer_reader(tmp_path):
    pairs = [{"prompt": "Say “hi”\nplease", "completion": "hi"}, {"prompt": "b", "completion": "c"}]
    assert sft_peer.read_pairs(bench_sft.write_jsonl(pairs, tmp_path / "p.jsonl")) == pairs


@pytest.mark.parametrize("chat_template", [True, False])
def test_peer_features_equal_adapt_clm_features(smollm2_tokenizer_dir, chat_template):
    from datasets import Dataset

    from adapt.recipe import resolve_recipe
    from adapt.tasks import get_task

    pairs = [{"prompt": "Sort the list.\n\n[3, 1, 2]", "completion": "[1, 2, 3]"},
             {"prompt": "Name a colour.", "completion": "Blue is a colour. " * 40}]  # cut at max_length
    recipe = resolve_recipe("clm-instruct", [("train.max_length", 64), ("tracking", []),
                                             ("task_options.chat_template", chat_template)])
    task = get_task(recipe)
    task.load_tokenizer(smollm2_tokenizer_dir)
    adapt_rows = task.featurize_pairs(Dataset.from_list(pairs))
    peer = sft_peer.featurize(task.tokenizer, pairs, max_length=64, chat_template=chat_template)
    assert peer["input_ids"] == adapt_rows["input_ids"]
    assert peer["labels"] == adapt_rows["labels"]
    assert len(peer["input_ids"][1]) == 64 and peer["labels"][1][-1] != -100


def test_peer_times_only_its_training_steps(tmp_path):
    """A tiny random Llama with the SmolLM2 tokenizer through the whole peer: the step timer counts every
    optimizer step and stays within Trainer's own train_runtime (which adds set-up around the loop)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(build_tiny_llama(tmp_path / "model"))
    pairs = [{"prompt": f"Add {i} and {i}.", "completion": f"The sum is {2 * i}."} for i in range(10)]
    train = bench_sft.write_jsonl(pairs[:6], tmp_path / "train.jsonl")
    validation = bench_sft.write_jsonl(pairs[6:], tmp_path / "validation.jsonl")
    result = sft_peer.run(train, validation, str(tmp_path / "model"), batch_size=4, lr=1e-3, epochs=1.0,
                          max_length=64, seed=0, precision="no")
    assert (result["examples"], result["train_steps"], result["mixed_precision"]) == (6, 2, "no")
    assert 0 < result["train_seconds"] <= result["train_runtime"]
    assert result["train_samples_per_s"] == pytest.approx(6 / result["train_seconds"])
    features = sft_peer.featurize(tokenizer, pairs[:6], 64, chat_template=True)
    tokens = sum(len(ids) for ids in features["input_ids"])
    assert result["train_tokens_per_s"] == pytest.approx(tokens / result["train_seconds"])
    assert result["validation_perplexity"] == pytest.approx(math.exp(result["eval_loss"]))
