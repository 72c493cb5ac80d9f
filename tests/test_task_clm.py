"""Causal LM task: passage splitting, block packing, completion-only labels, token-weighted perplexity, and
few-step fine-tunes of tiny GPT-2 / Llama models that load in a text-generation pipeline and `adapt predict`."""

import json
import math
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from typer.testing import CliRunner

from adapt.data import split_passages
from adapt.errors import AdaptError
from adapt.recipe import resolve_recipe
from adapt.tasks import get_task
from adapt.tasks.causal_lm import pack_blocks
from adapt.train import evaluate, finetune

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tiny_shakespeare" / "input.txt"


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from transformers import AutoTokenizer

    from adapt.assets import resolve_model_path

    folder = tmp_path_factory.mktemp("smollm2-tokenizer")
    AutoTokenizer.from_pretrained(resolve_model_path("embedded:smollm2")).save_pretrained(folder)
    return folder


def _tiny_model(tokenizer_dir, folder, config):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_gpt2(tokenizer_dir, tmp_path_factory):
    from transformers import AutoTokenizer, GPT2Config

    vocab = len(AutoTokenizer.from_pretrained(tokenizer_dir))
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=128, vocab_size=vocab,
                        bos_token_id=1, eos_token_id=2)
    return _tiny_model(tokenizer_dir, tmp_path_factory.mktemp("tiny-gpt2"), config)


@pytest.fixture(scope="module")
def tiny_llama(tokenizer_dir, tmp_path_factory):
    from transformers import AutoTokenizer, LlamaConfig

    vocab = len(AutoTokenizer.from_pretrained(tokenizer_dir))
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, max_position_embeddings=256, vocab_size=vocab,
                         bos_token_id=1, eos_token_id=2, pad_token_id=2)
    return _tiny_model(tokenizer_dir, tmp_path_factory.mktemp("tiny-llama"), config)


def make_task(model_dir, overrides=()):
    recipe = resolve_recipe("clm", [("model", str(model_dir)), ("tracking", []), *overrides])
    task = get_task(recipe)
    task.load_tokenizer(str(model_dir))
    return task


def write_text(path: Path, paragraphs: int = 60) -> Path:
    speeches = [f"SPEAKER {i % 5}:\nThe quick brown fox number {i} jumps over the lazy dog.\n" for i in range(paragraphs)]
    path.write_text("\n".join(speeches))
    return path


def write_pairs(path: Path, n: int = 24) -> Path:
    rows = [{"prompt": f"Add {i} and {i}.", "completion": f"The sum is {2 * i}."} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---- data preparation ----------------------------------------------------------------------------------
def test_passages_cut_after_blank_lines_and_join_back_exactly():
    text = "A:\nline one\n\nB:\nline two\n\nC:\nthree\n"
    passages = split_passages(text, min_chars=12)
    assert passages == ["A:\nline one\n\n", "B:\nline two\n\n", "C:\nthree\n"]
    assert "".join(passages) == text
    assert split_passages(text, min_chars=10_000) == [text]


def test_packing_puts_eos_after_documents_and_drops_the_tail():
    packed = pack_blocks([[1, 2, 3], [4, 5], [6]], [False, True, True], eos_id=0, block_size=2)
    # stream: 1 2 3 | 4 5 EOS | 6 EOS -> (1 2) (3 4) (5 0) (6 0); rows 0 and 1 are one document
    assert packed["input_ids"] == [[1, 2], [3, 4], [5, 0], [6, 0]]
    assert packed["example"] == [0, 0, 1, 2]
    assert packed["position_ids"] == [[0, 1]] * 4 and packed["labels"] == packed["input_ids"]
    packed = pack_blocks([[1, 2, 3], [4, 5]], [True, True], eos_id=0, block_size=4)
    assert packed["input_ids"] == [[1, 2, 3, 0]] and packed["example"] == [0]  # "4 5 EOS" is the ragged tail


def test_packed_blocks_restart_positions_per_document_and_mask_cross_document_targets():
    docs = [[11, 12, 13], [21, 22], [31, 32, 33, 34]]
    packed = pack_blocks(docs, [True, True, True], eos_id=0, block_size=10)
    # stream: 11 12 13 EOS | 21 22 EOS | 31 32 33 (34 EOS: the tail)
    assert packed["input_ids"] == [[11, 12, 13, 0, 21, 22, 0, 31, 32, 33]]
    assert packed["position_ids"] == [[0, 1, 2, 3, 0, 1, 2, 0, 1, 2]]
    # each EOS stays a target; 21 and 31 would be predicted from the previous document's EOS
    assert packed["labels"] == [[11, 12, 13, 0, -100, 22, 0, -100, 32, 33]]
    # a block that starts inside a document: that piece restarts at position 0 too
    packed = pack_blocks(docs, [True, True, True], eos_id=0, block_size=5)
    assert packed["input_ids"] == [[11, 12, 13, 0, 21], [22, 0, 31, 32, 33]]
    assert packed["position_ids"] == [[0, 1, 2, 3, 0], [0, 1, 0, 1, 2]]
    assert packed["labels"] == [[11, 12, 13, 0, -100], [22, 0, -100, 32, 33]]
    assert packed["example"] == [0, 1]
    # passages of one file (no document end between them) keep counting; an empty row starts nothing
    packed = pack_blocks([[1, 2], [], [3], [4]], [False, False, True, True], eos_id=0, block_size=6)
    assert packed["position_ids"] == [[0, 1, 2, 3, 0, 1]] and packed["labels"] == [[1, 2, 3, 0, -100, 0]]


def test_text_blocks_of_three_documents_carry_position_ids_and_no_attention_mask(tiny_gpt2, tmp_path):
    texts = ["first doc here", "second one", "the third document is longer"]
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    tok_ids = make_task(tiny_gpt2).tokenizer(texts, add_special_tokens=False)["input_ids"]
    n1, n2, n3 = (len(ids) + 1 for ids in tok_ids)  # with EOS
    task = make_task(tiny_gpt2, [("task_options.block_size", n1 + n2 + n3)])
    features = task.featurize(task.read_source(str(docs), "train"), "train")
    assert "attention_mask" not in features.column_names and len(features) == 1
    assert features[0]["position_ids"] == [*range(n1), *range(n2), *range(n3)]
    labels = features[0]["labels"]
    assert [i for i, label in enumerate(labels) if label == -100] == [n1, n1 + n2]
    batch = task.collate(features[:1])
    assert set(batch) == {"input_ids", "position_ids", "labels"}
    assert task.count_targets(batch) == n1 + n2 + n3 - 3  # all but the block's first token and two doc starts


def test_text_features_are_consecutive_blocks_of_the_token_stream(tiny_gpt2, tmp_path):
    task = make_task(tiny_gpt2, [("task_options.block_size", 8), ("task_options.passage_chars", 50)])
    raw = task.read_source(str(write_text(tmp_path / "t.txt", 6)), "train")
    assert all(not e for e in list(raw["ends_document"])[:-1]) and raw["ends_document"][-1]
    features = task.featurize(raw, "train")
    stream = [t for text in list(raw["text"]) for t in task.tokenizer(text, add_special_tokens=False)["input_ids"]]
    stream.append(task.tokenizer.eos_token_id)
    assert list(features["input_ids"]) == [stream[i:i + 8] for i in range(0, len(stream) - 7, 8)]
    assert list(features["labels"]) == list(features["input_ids"]) and set(features["length"]) == {8}
    assert len(stream) - 8 * len(features) < 8


def test_plain_text_validation_is_whole_passages_with_no_overlap(tiny_gpt2, tmp_path):
    task = make_task(tiny_gpt2, [("data.train", str(write_text(tmp_path / "t.txt"))), ("task_options.passage_chars", 100)])
    splits = task.load_splits()
    train, validation = set(list(splits["train"]["text"])), set(list(splits["validation"]["text"]))
    assert validation and not train & validation


def test_table_rows_are_documents_ended_by_eos_and_blank_rows_dropped(tiny_gpt2, tmp_path):
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"body": "first doc"}\n{"body": "  "}\n{"body": "second doc"}\n')
    task = make_task(tiny_gpt2, [("data.columns.text", "body"), ("task_options.block_size", 2)])
    raw = task.read_source(str(docs), "train")
    assert list(raw["text"]) == ["first doc", "second doc"] and all(raw["ends_document"])
    eos = task.tokenizer.eos_token_id
    stream = [t for ids in task.tokenizer(["first doc", "second doc"], add_special_tokens=False)["input_ids"]
              for t in ids + [eos]]
    assert sum(list(task.featurize(raw, "train")["input_ids"]), []) == stream[:len(stream) // 2 * 2]


def test_completion_only_labels_with_and_without_chat_template(tiny_llama, tmp_path):
    from datasets import Dataset

    raw = Dataset.from_dict({"prompt": ["What is 2+2?"], "completion": [" Four."]})
    for chat in (False, True):
        task = make_task(tiny_llama, [("task_options.chat_template", chat)])
        tok = task.tokenizer
        prompt_text = tok.apply_chat_template([{"role": "user", "content": "What is 2+2?"}], tokenize=False,
                                              add_generation_prompt=True) if chat else "What is 2+2?"
        prompt = tok(prompt_text, add_special_tokens=not chat)["input_ids"]
        completion = tok(" Four.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        row = task.featurize(raw, "train")[0]
        assert row["input_ids"] == prompt + completion
        assert row["labels"] == [-100] * len(prompt) + completion
        assert row["length"] == len(prompt) + len(completion)
        assert prompt_text.startswith("<|im_start|>") == chat


def test_targets_are_counted_after_the_shift(tiny_gpt2):
    task = make_task(tiny_gpt2)
    batch = {"labels": torch.tensor([[5, 6, 7], [-100, -100, 8]])}
    assert task.count_targets(batch) == 3  # the first position is never a target


def test_wrong_columns_and_too_little_text_are_user_errors(tiny_gpt2, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "a"}\n')
    task = make_task(tiny_gpt2)
    with pytest.raises(AdaptError, match="no column 'text'"):
        task.read_source(str(bad), "train")
    short = tmp_path / "short.txt"
    short.write_text("too short\n")
    with pytest.raises(AdaptError, match="block_size"):
        task.featurize(task.read_source(str(short), "train"), "validation")


# ---- perplexity ---------------------------------------------------------------------------------------
class _Output:
    def __init__(self, logits):
        self.logits = logits


class MarkovLM(torch.nn.Module):
    """Logits depend on the current token only, through a rank-4 table (a full V x V table would take
    gigabytes); scale 0 is the uniform model."""

    def __init__(self, vocab, scale=1.0):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.embed = torch.randn(vocab, 4, generator=generator) * scale
        self.out = torch.randn(4, vocab, generator=generator)

    def forward(self, input_ids, attention_mask=None, **_):
        return _Output(self.embed[input_ids] @ self.out)


def _evaluate(task, model, raw, batch_size):
    features = task.featurize(raw, "validation")
    metrics, predictions = evaluate(task, model, features, raw, Accelerator(cpu=True), batch_size)
    return metrics, predictions


def test_uniform_model_has_perplexity_exactly_the_vocabulary_size(tiny_gpt2, tmp_path):
    task = make_task(tiny_gpt2, [("task_options.block_size", 8), ("task_options.passage_chars", 50)])
    vocab = len(task.tokenizer)
    raw = task.read_source(str(write_text(tmp_path / "t.txt", 6)), "validation")
    metrics, _ = _evaluate(task, MarkovLM(vocab, scale=0.0), raw, batch_size=3)
    assert metrics["perplexity"] == pytest.approx(vocab, rel=1e-5)
    assert metrics["loss"] == pytest.approx(math.log(vocab), rel=1e-6)
    assert metrics["tokens"] == len(task.featurize(raw, "validation")) * 7


def test_perplexity_weights_tokens_not_batches(tiny_gpt2):
    from datasets import Dataset

    task = make_task(tiny_gpt2, [("task_options.generation_metrics", False)])  # MarkovLM cannot generate
    vocab = len(task.tokenizer)
    model = MarkovLM(vocab)
    raw = Dataset.from_dict({"prompt": ["a", "b c d e f"], "completion": [" one two three four five six", " x"]})
    metrics, predictions = _evaluate(task, model, raw, batch_size=1)
    features = task.featurize(raw, "validation")
    total, tokens = 0.0, 0
    for ids, labels in zip(features["input_ids"], features["labels"]):
        log_probs = model(torch.tensor(ids[:-1])).logits.log_softmax(-1)
        for position, target in enumerate(labels[1:]):
            if target != -100:
                total -= float(log_probs[position, target])
                tokens += 1
    assert metrics["tokens"] == tokens
    assert metrics["perplexity"] == pytest.approx(math.exp(total / tokens), rel=1e-4)
    batch_means = [math.exp(p["nll"] / p["tokens"]) for p in predictions]
    assert predictions[0]["tokens"] != predictions[1]["tokens"]
    assert abs(metrics["perplexity"] - sum(batch_means) / 2) > 1e-3 * metrics["perplexity"]


def test_nll_and_targets_of_a_packed_block_count_only_same_document_predictions(tiny_gpt2):
    task = make_task(tiny_gpt2)
    model = MarkovLM(100)
    features = pack_blocks([[11, 12, 13], [21, 22], [31, 32, 33, 34]], [True, True, True], eos_id=0, block_size=10)
    batch = task.collate({**features, "length": [10]})
    # (previous token -> target) pairs scored: within each document, its EOS included; 0 -> 21 and 0 -> 31 not
    pairs = [(11, 12), (12, 13), (13, 0), (21, 22), (22, 0), (31, 32), (32, 33)]
    log_probs = model(torch.arange(100)).logits.log_softmax(-1)
    expected = -sum(float(log_probs[before, target]) for before, target in pairs)
    assert task.count_targets(batch) == 7
    out = task.eval_step(model, batch)
    assert int(out["tokens"]) == 7 and float(out["nll"]) == pytest.approx(expected, rel=1e-6)
    loss, targets = task.loss(model, batch)
    assert int(targets) == 7 and float(loss) == pytest.approx(expected, rel=1e-6)


def _tiny_decoder(family: str):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if family == "llama":
        config = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
        return LlamaForCausalLM._from_config(config, attn_implementation="sdpa").eval()
    config = GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=2)
    return GPT2LMHeadModel._from_config(config, attn_implementation="sdpa").eval()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_packed_block_logits_equal_each_document_run_alone(tiny_gpt2, family):
    from adapt.tasks.causal_lm import forward

    task = make_task(tiny_gpt2)
    model = _tiny_decoder(family)
    generator = torch.Generator().manual_seed(1)
    docs = [torch.randint(3, 100, (n,), generator=generator).tolist() for n in (5, 3, 7)]
    features = pack_blocks(docs, [True, True, True], eos_id=2, block_size=18)  # 6 + 4 + 8 tokens: one block
    batch = task.collate({**features, "length": [18]})
    assert "attention_mask" not in batch and model.config.use_cache  # forward must not build a cache
    with torch.no_grad():
        packed = forward(model, batch).logits[0]
        alone = torch.cat([model(input_ids=torch.tensor([ids + [2]])).logits[0] for ids in docs])
        attending_across = model(input_ids=batch["input_ids"], attention_mask=torch.ones_like(batch["input_ids"])).logits[0]
    assert packed.shape == alone.shape == (18, 100)
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=0)
    assert (attending_across[6:] - alone[6:]).abs().max() > 1e-3  # the test sees cross-document attention


# ---- end to end --------------------------------------------------------------------------------------------
def _check_generation_folder(run: Path):
    from transformers import pipeline

    assert (run / "generation_config.json").exists()
    generator = pipeline("text-generation", model=str(run))
    out = generator("The quick brown", max_new_tokens=5, do_sample=False)
    assert out[0]["generated_text"].startswith("The quick brown")

    from adapt.cli import app

    for decoding in ([], ["--temperature", "0.8", "--top-p", "0.9"]):
        result = CliRunner().invoke(app, ["predict", "--model", str(run), "--max-new-tokens", "4", *decoding,
                                          "The quick", "Add 1 and 1."])
        assert result.exit_code == 0, result.output
        records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
        assert [r["input"]["prompt"] for r in records] == ["The quick", "Add 1 and 1."]
        assert all(isinstance(r["generated_text"], str) for r in records)


def test_clm_finetune_on_plain_text_then_generate(tiny_gpt2, tmp_path, adapt_cache):
    run = tmp_path / "run"
    final = finetune(resolve_recipe("clm", [
        ("model", str(tiny_gpt2)), ("data.train", str(write_text(tmp_path / "t.txt"))), ("train.max_steps", 3),
        ("train.batch_size", 4), ("task_options.block_size", 32), ("task_options.passage_chars", 200),
        ("train.lr", 1e-3), ("output_dir", str(run)), ("tracking", [])]))
    assert math.isfinite(final["validation"]["perplexity"]) and final["validation"]["tokens"] % 31 == 0
    assert final["validation"]["loss"] == pytest.approx(math.log(final["validation"]["perplexity"]))
    _check_generation_folder(run)


def test_instruct_finetune_on_pairs_then_generate(tiny_llama, tmp_path, adapt_cache):
    run = tmp_path / "run"
    final = finetune(resolve_recipe("clm-instruct", [
        ("model", str(tiny_llama)), ("data.train", str(write_pairs(tmp_path / "pairs.jsonl"))),
        ("train.max_steps", 3), ("train.batch_size", 4), ("train.lr", 1e-3), ("task_options.max_new_tokens", 8),
        ("train.max_length", 256),  # the tiny Llama's positions (the recipe's 512 is SmolLM2's)
        ("output_dir", str(run)), ("tracking", [])]))
    assert math.isfinite(final["validation"]["perplexity"])
    config = json.loads((run / "generation_config.json").read_text())
    assert config["max_new_tokens"] == 8 and config["do_sample"] is False
    _check_generation_folder(run)


@pytest.mark.integration
@pytest.mark.skipif(not SHAKESPEARE.exists(), reason="shared tiny Shakespeare data not present")
def test_smollm2_on_tiny_shakespeare_runs(tmp_path):
    final = finetune(resolve_recipe("clm", [
        ("data.train", str(SHAKESPEARE)), ("train.max_steps", 1), ("train.batch_size", 2),
        ("task_options.block_size", 64), ("data.max_train_examples", 4), ("data.max_eval_examples", 2),
        ("output_dir", str(tmp_path / "run")), ("tracking", [])]))
    # the pretrained model already knows English: far below the 49k-token uniform perplexity
    assert final["validation"]["perplexity"] < 200


# ---- the training loss on one packed row ------------------------------------------------------------
def _twin_llamas():
    import copy

    from transformers import LlamaConfig, LlamaForCausalLM

    from adapt.speed import padding_free

    torch.manual_seed(0)
    reference = LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2))
    packed = copy.deepcopy(reference)
    assert padding_free.install(packed)
    return reference, packed


@pytest.mark.parametrize("layout", ["prompt/completion rows", "document blocks"])
def test_the_packed_loss_equals_the_padded_loss_and_its_gradients(layout):
    from adapt.tasks.base import summed_cross_entropy
    from adapt.tasks.causal_lm import packed_targets_loss, trains_packed

    reference, packed = _twin_llamas()
    assert not trains_packed(reference) and trains_packed(packed)  # sdpa stays padded; adapt_varlen packs
    torch.manual_seed(1)
    if layout == "prompt/completion rows":
        lengths, width = (9, 4, 2, 6), 9
        ids = torch.randint(3, 100, (4, width))
        mask = torch.tensor([[1] * n + [0] * (width - n) for n in lengths])
        labels = torch.where(mask.bool(), ids, -100)
        labels[:, :2] = -100  # two prompt tokens per row
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    else:  # blocks of 8 tokens, documents restarting positions inside them, no attention_mask
        ids = torch.randint(3, 100, (2, 8))
        positions = torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4], [0, 1, 0, 1, 2, 3, 4, 5]])
        labels = ids.masked_fill(positions == 0, -100)
        batch = {"input_ids": ids, "position_ids": positions, "labels": labels}
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    expected, targets = summed_cross_entropy(reference(**inputs, use_cache=False).logits[:, :-1], labels[:, 1:])
    actual, packed_targets = packed_targets_loss(packed, batch)
    assert int(packed_targets) == int(targets) == int((labels[:, 1:] != -100).sum())
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
    expected.backward()
    actual.backward()
    grads = dict(packed.named_parameters())
    for name, param in reference.named_parameters():
        torch.testing.assert_close(grads[name].grad, param.grad, atol=1e-6, rtol=1e-4, msg=name)


def test_the_packed_loss_computes_logits_only_at_scored_positions(monkeypatch):
    from adapt.tasks.causal_lm import packed_targets_loss

    _, packed = _twin_llamas()
    rows = []
    packed.lm_head.register_forward_hook(lambda m, args, out: rows.append(tuple(args[0].shape)))
    ids = torch.randint(3, 100, (2, 6))
    labels = torch.full_like(ids, -100)
    labels[0, 3:] = ids[0, 3:]  # 3 targets in row 0, 1 in row 1
    labels[1, 5] = ids[1, 5]
    packed_targets_loss(packed, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    assert rows == [(1, 4, 32)]  # 4 hidden states reach the vocabulary projection, not 12


def test_chunked_cross_entropy_equals_the_upcast_cross_entropy():
    import torch.nn.functional as F

    from adapt.tasks.base import ChunkedCrossEntropy, target_cross_entropy

    torch.manual_seed(0)
    rows = 2 * ChunkedCrossEntropy.ROWS + 22  # three blocks, the last one partial
    logits = (torch.randn(rows, ChunkedCrossEntropy.MIN_CLASSES + 5) * 3).to(torch.bfloat16)
    targets = torch.randint(0, logits.shape[1], (rows,))
    upcast, chunked = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    expected = F.cross_entropy(upcast.float(), targets, reduction="sum")
    actual = target_cross_entropy(chunked, targets)
    assert actual.grad_fn.name().startswith("ChunkedCrossEntropy")
    torch.testing.assert_close(actual, expected, atol=1e-3, rtol=1e-6)
    (expected * 0.37).backward()
    (actual * 0.37).backward()
    assert chunked.grad.dtype == torch.bfloat16
    torch.testing.assert_close(chunked.grad.float(), upcast.grad.float(), atol=1e-7, rtol=8e-3)  # within a bf16 step
