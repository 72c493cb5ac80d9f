"""Padding-free parity over the architecture matrix of issue 16 (acceptance point 1).

For every encoder (bert, roberta, deberta-v2, distilbert, electra, modernbert) and head adapt trains
(sequence classification, NER = token classification, extractive QA), and every decoder (gpt2, llama, qwen2,
mistral, gemma) in its two tasks (causal LM, and prompt/completion = the same model with -100 prompt labels),
on tiny random fp32 configs:

1. a model with `padding_free.install` gives, at the real positions of a right-padded batch, the logits of
   transformers' own padded forward (same weights, not installed) within 1e-5;
2. the parameter gradients of a summed cross-entropy over the real positions agree within
   atol=1e-5, rtol=1e-5 (every parameter that gets a gradient; see `assert_same_gradients`);
3. one packed row of several documents (position ids restarting per document, no attention mask) gives the
   logits and gradients of the same documents run one by one through transformers' forward (decoders, and
   encoders under a token-classification head).

Architectures whose attention does not go through transformers' attention registry are expected to be
refused: `install` returns False with a reason, and the model computes exactly what it did before."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import (AutoModelForCausalLM, AutoModelForQuestionAnswering, AutoModelForSequenceClassification,
                          AutoModelForTokenClassification, BertConfig, DebertaV2Config, DistilBertConfig,
                          ElectraConfig, GemmaConfig, GPT2Config, LlamaConfig, MistralConfig, ModernBertConfig,
                          PretrainedConfig, Qwen2Config, RobertaConfig)

from adapt.speed import padding_free

VOCAB = 99
NUM_LABELS = 5
LENGTHS = (8, 5, 1, 6)  # a right-padded batch: one row full length, one single token
PROMPT_LENGTHS = (3, 2, 0, 4)  # prompt/completion: labels are -100 on each row's first tokens
DOCUMENTS = (5, 3, 4)  # token counts of the documents packed into one row
DOCUMENT_PROMPT_LENGTH = 2
ATOL = RTOL = 1e-5

# Weights 10x the released init scale (0.02): attention scores of O(1) instead of ~0 (near-uniform attention),
# so that a wrong mask, position or window changes the logits by far more than the 1e-5 tolerance.
INIT = 0.2
# Shared by the tiny configs: 2 layers, hidden 32, 4 heads. Ids 0-2 are special (pad/bos/eos, or pad/cls/sep);
# random tokens are 3..VOCAB-1. Dropout is 0 where it is not already the default.
TINY = dict(vocab_size=VOCAB, initializer_range=INIT, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=64)
SPECIAL_IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def bert() -> PretrainedConfig:
    return BertConfig(**TINY, type_vocab_size=2, **NO_DROPOUT, **SPECIAL_IDS)


def roberta() -> PretrainedConfig:
    # RoBERTa's positions count from pad_token_id + 1, so its pad id is 1, as in the released checkpoints.
    return RobertaConfig(**TINY | dict(max_position_embeddings=66), type_vocab_size=1, **NO_DROPOUT, pad_token_id=1,
                         bos_token_id=0, eos_token_id=2)


def deberta_v2() -> PretrainedConfig:
    # DeBERTa-v3's settings: relative (disentangled) attention, no absolute positions, no token types.
    return DebertaV2Config(**TINY, type_vocab_size=0, relative_attention=True, position_biased_input=False,
                           pos_att_type=["p2c", "c2p"], position_buckets=16, max_relative_positions=-1,
                           norm_rel_ebd="layer_norm", share_att_key=True, pooler_dropout=0.0, **NO_DROPOUT,
                           **SPECIAL_IDS)


def distilbert() -> PretrainedConfig:
    return DistilBertConfig(vocab_size=VOCAB, initializer_range=INIT, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                            max_position_embeddings=64, dropout=0.0, attention_dropout=0.0, qa_dropout=0.0,
                            seq_classif_dropout=0.0, pad_token_id=0)


def electra() -> PretrainedConfig:
    # embedding_size < hidden_size, as in ELECTRA-small: the embeddings go through a projection.
    return ElectraConfig(**TINY, embedding_size=16, type_vocab_size=2, **NO_DROPOUT, **SPECIAL_IDS)


def modernbert() -> PretrainedConfig:
    # Layer 0 global, layer 1 local; a 4-token local window (2 each side) so that the window bites on 8 tokens.
    return ModernBertConfig(**TINY, global_attn_every_n_layers=2, local_attention=4, **SPECIAL_IDS,
                            cls_token_id=1, sep_token_id=2)


def gpt2() -> PretrainedConfig:
    return GPT2Config(vocab_size=VOCAB, initializer_range=INIT, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **SPECIAL_IDS)


def llama() -> PretrainedConfig:
    # Grouped-query attention: 4 query heads share 2 key/value heads.
    return LlamaConfig(**TINY, num_key_value_heads=2, **SPECIAL_IDS)


def qwen2() -> PretrainedConfig:
    return Qwen2Config(**TINY, num_key_value_heads=2, **SPECIAL_IDS)


def mistral() -> PretrainedConfig:
    # A 4-token sliding window (Mistral-7B-v0.1 has one of 4096), so that it bites on 8 tokens.
    return MistralConfig(**TINY, num_key_value_heads=2, sliding_window=4, **SPECIAL_IDS)


def gemma() -> PretrainedConfig:
    # Multi-query attention and an explicit head_dim, as in Gemma-2B.
    return GemmaConfig(**TINY, num_key_value_heads=1, head_dim=8, **SPECIAL_IDS)


ENCODERS = {"bert": bert, "roberta": roberta, "deberta-v2": deberta_v2, "distilbert": distilbert,
            "electra": electra, "modernbert": modernbert}
DECODERS = {"gpt2": gpt2, "llama": llama, "qwen2": qwen2, "mistral": mistral, "gemma": gemma}
ENCODER_HEADS = {"classification": AutoModelForSequenceClassification, "ner": AutoModelForTokenClassification,
                 "qa": AutoModelForQuestionAnswering}
DECODER_TASKS = ("clm", "prompt_completion")
# Attention outside transformers' registry (DeBERTa's disentangled attention): padding-free must refuse it.
UNSUPPORTED = {"deberta-v2"}

ENCODER_CASES = [pytest.param(arch, head, id=f"{arch}-{head}") for arch in ENCODERS for head in ENCODER_HEADS
                 if arch not in UNSUPPORTED]
DECODER_CASES = [pytest.param(arch, task, id=f"{arch}-{task}") for arch in DECODERS for task in DECODER_TASKS]
UNSUPPORTED_CASES = [pytest.param(arch, head, id=f"{arch}-{head}") for arch in ENCODERS for head in ENCODER_HEADS
                     if arch in UNSUPPORTED]


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def model_pair(config: PretrainedConfig, auto_class) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(reference, twin): the same random weights (seed 0) twice, transformers' default attention (SDPA, or
    the architecture's own). The twin is the one to install padding-free on."""
    torch.manual_seed(0)
    config.num_labels = 2 if auto_class is AutoModelForQuestionAnswering else NUM_LABELS
    reference = auto_class.from_config(config)
    return reference, copy.deepcopy(reference)


def installed_pair(arch: str, config: PretrainedConfig, auto_class) -> tuple[torch.nn.Module, torch.nn.Module]:
    """`model_pair` with padding-free installed on the twin (failing with `unsupported`'s reason if refused)."""
    reference, fast = model_pair(config, auto_class)
    assert padding_free.install(fast) is True, f"{arch}: {padding_free.unsupported(fast)}"
    return reference, fast


def padded_batch(config: PretrainedConfig) -> dict[str, torch.Tensor]:
    """A right-padded [4, 8] batch of random tokens (rows of LENGTHS real tokens), with token types 0/1 split
    in the middle of each row where the model has two token types."""
    lengths = torch.tensor(LENGTHS)[:, None]
    positions = torch.arange(max(LENGTHS))
    mask = (positions < lengths).long()
    ids = torch.randint(3, VOCAB, mask.shape, generator=generator(1))
    batch = {"input_ids": ids.masked_fill(mask == 0, config.pad_token_id), "attention_mask": mask}
    if getattr(config, "type_vocab_size", 0) >= 2:
        batch["token_type_ids"] = (positions >= lengths // 2).long() * mask
    return batch


def real_outputs(head: str, out, mask: torch.Tensor) -> list[torch.Tensor]:
    """What a head computes at the real positions: [batch, labels] for classification, [real tokens, labels]
    for NER and decoders, [real tokens] start and end scores for QA."""
    real = mask.bool()
    if head == "qa":
        return [out.start_logits[real], out.end_logits[real]]
    return [out.logits] if head == "classification" else [out.logits[real]]


def encoder_loss(head: str, out, mask: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy on fixed random labels (seed 2) over the real positions: one label per row for
    classification, per real token for NER, and for QA a start and an end position inside each row, scored
    over that row's real positions only."""
    g, real = generator(2), mask.bool()
    if head == "classification":
        return F.cross_entropy(out.logits, torch.randint(0, NUM_LABELS, (len(mask),), generator=g), reduction="sum")
    if head == "ner":
        logits = out.logits[real]
        return F.cross_entropy(logits, torch.randint(0, NUM_LABELS, (len(logits),), generator=g), reduction="sum")
    loss = torch.zeros(())
    for scores in (out.start_logits, out.end_logits):
        answer = (torch.rand(len(mask), generator=g) * mask.sum(1)).long()
        loss = loss + F.cross_entropy(scores.masked_fill(~real, float("-inf")), answer, reduction="sum")
    return loss


def lm_labels(input_ids: torch.Tensor, mask: torch.Tensor, prompt_lengths: torch.Tensor | None) -> torch.Tensor:
    """Causal LM labels: the input ids, -100 on pads and (prompt/completion) on each row's prompt tokens."""
    labels = input_ids.masked_fill(mask == 0, -100)
    if prompt_lengths is not None:
        labels = labels.masked_fill(torch.arange(labels.shape[1]) < prompt_lengths[:, None], -100)
    return labels


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed shifted cross-entropy: logits at t [batch, length, vocab] predict labels at t + 1 [batch, length]
    (transformers' ForCausalLMLoss with reduction "sum"); only positions whose next label is not -100 count."""
    targets = labels[:, 1:]
    keep = targets != -100
    return F.cross_entropy(logits[:, :-1][keep], targets[keep], reduction="sum")


def assert_same_outputs(actual: list[torch.Tensor], expected: list[torch.Tensor]) -> None:
    for a, e in zip(actual, expected, strict=True):
        assert a.shape == e.shape
        torch.testing.assert_close(a, e, atol=ATOL, rtol=RTOL)


def assert_same_gradients(fast: torch.nn.Module, reference: torch.nn.Module) -> None:
    """Every parameter that gets a gradient in the reference gets the same one (atol 1e-5, rtol 1e-5: summed
    losses give gradients up to ~10 in magnitude, where fp32 reassociation across layouts is ~1e-6); the
    ones that get none there get none (or zeros) here."""
    fast_parameters = dict(fast.named_parameters())
    assert fast_parameters.keys() == dict(reference.named_parameters()).keys()
    compared = 0
    for name, parameter in reference.named_parameters():
        grad = fast_parameters[name].grad
        if parameter.grad is None:
            assert grad is None or not grad.any(), name
            continue
        assert grad is not None, name
        torch.testing.assert_close(grad, parameter.grad, atol=ATOL, rtol=RTOL, msg=lambda m: f"{name}: {m}")
        compared += 1
    assert compared >= 10  # embeddings, every layer's weights, the head


def embedded_token_counts(model: torch.nn.Module) -> list[int]:
    """A list that gets, at each forward of `model`, how many token ids its input embedding looks up: the
    padded batch's 32 positions under transformers' forward, its 20 real tokens under padding-free."""
    counts: list[int] = []
    model.get_input_embeddings().register_forward_hook(lambda module, args, output: counts.append(args[0].numel()))
    return counts


@pytest.mark.parametrize("arch,head", ENCODER_CASES)
def test_encoder_logits_and_gradients_equal_the_padded_forward(arch, head):
    config = ENCODERS[arch]()
    reference, fast = installed_pair(arch, config, ENCODER_HEADS[head])
    counts = embedded_token_counts(fast)
    batch = padded_batch(config)
    mask = batch["attention_mask"]
    with torch.no_grad():
        reference.eval(), fast.eval()
        assert_same_outputs(real_outputs(head, fast(**batch), mask), real_outputs(head, reference(**batch), mask))
    reference.train(), fast.train()  # dropout is 0: training mode must agree too
    expected, actual = reference(**batch), fast(**batch)
    assert_same_outputs(real_outputs(head, actual, mask), real_outputs(head, expected, mask))
    assert counts == [sum(LENGTHS)] * 2  # both forwards computed the real tokens only
    encoder_loss(head, expected, mask).backward()
    encoder_loss(head, actual, mask).backward()
    assert_same_gradients(fast, reference)


@pytest.mark.parametrize("arch,task", DECODER_CASES)
def test_decoder_logits_and_gradients_equal_the_padded_forward(arch, task):
    config = DECODERS[arch]()
    reference, fast = installed_pair(arch, config, AutoModelForCausalLM)
    counts = embedded_token_counts(fast)
    batch = padded_batch(config)
    mask = batch["attention_mask"]
    prompts = torch.tensor(PROMPT_LENGTHS) if task == "prompt_completion" else None
    labels = lm_labels(batch["input_ids"], mask, prompts)
    with torch.no_grad():
        reference.eval(), fast.eval()
        assert_same_outputs(real_outputs("lm", fast(**batch), mask), real_outputs("lm", reference(**batch), mask))
    reference.train(), fast.train()
    expected, actual = reference(**batch), fast(**batch)
    assert_same_outputs(real_outputs("lm", actual, mask), real_outputs("lm", expected, mask))
    assert counts == [sum(LENGTHS)] * 2
    next_token_loss(expected.logits, labels).backward()
    next_token_loss(actual.logits, labels).backward()
    assert_same_gradients(fast, reference)


def random_documents(seed: int = 3) -> list[torch.Tensor]:
    g = generator(seed)
    return [torch.randint(3, VOCAB, (1, n), generator=g) for n in DOCUMENTS]


def packed_position_ids(config: PretrainedConfig) -> torch.Tensor:
    """[1, tokens]: each document's own position ids, restarting per document. RoBERTa counts positions from
    pad_token_id + 1 (what it derives from input_ids when given none)."""
    first = config.pad_token_id + 1 if config.model_type == "roberta" else 0
    return torch.cat([torch.arange(n) + first for n in DOCUMENTS])[None]


@pytest.mark.parametrize("arch,task", DECODER_CASES)
def test_packed_documents_equal_the_documents_one_by_one(arch, task):
    """DataCollatorWithFlattening's layout: the documents concatenated in one [1, tokens] row, position ids
    restarting at 0 for each, no attention mask, and -100 as each document's first label so that no document
    predicts the next one's first token."""
    config = DECODERS[arch]()
    reference, fast = installed_pair(arch, config, AutoModelForCausalLM)
    documents = random_documents()
    prompt = torch.tensor([DOCUMENT_PROMPT_LENGTH if task == "prompt_completion" else 0])
    labels = [lm_labels(d, torch.ones_like(d), prompt) for d in documents]
    packed_labels = torch.cat([lab.index_fill(1, torch.tensor([0]), -100) for lab in labels], 1)
    reference.train(), fast.train()
    one_by_one = [reference(input_ids=d).logits for d in documents]
    packed = fast(input_ids=torch.cat(documents, 1), position_ids=packed_position_ids(config)).logits
    assert_same_outputs([packed], [torch.cat(one_by_one, 1)])
    sum(next_token_loss(logits, lab) for logits, lab in zip(one_by_one, labels)).backward()
    next_token_loss(packed, packed_labels).backward()
    assert_same_gradients(fast, reference)


@pytest.mark.parametrize("arch", [arch for arch in ENCODERS if arch not in UNSUPPORTED])
def test_packed_documents_equal_the_documents_one_by_one_for_ner(arch):
    """Encoders: a packed row of documents, tagged token by token, attends within each document only (the
    classification and QA heads read a whole row as one input, so packing means nothing to them)."""
    config = ENCODERS[arch]()
    reference, fast = installed_pair(arch, config, AutoModelForTokenClassification)
    documents = random_documents()
    tags = torch.randint(0, NUM_LABELS, (sum(DOCUMENTS),), generator=generator(4))
    reference.train(), fast.train()
    one_by_one = torch.cat([reference(input_ids=d).logits for d in documents], 1)[0]
    packed = fast(input_ids=torch.cat(documents, 1), position_ids=packed_position_ids(config)).logits[0]
    assert_same_outputs([packed], [one_by_one])
    F.cross_entropy(one_by_one, tags, reduction="sum").backward()
    F.cross_entropy(packed, tags, reduction="sum").backward()
    assert_same_gradients(fast, reference)


@pytest.mark.parametrize("arch,head", UNSUPPORTED_CASES)
def test_unsupported_architectures_are_refused_and_left_unchanged(arch, head):
    config = ENCODERS[arch]()
    reference, model = model_pair(config, ENCODER_HEADS[head])
    batch = padded_batch(config)
    reference.eval(), model.eval()
    attention = model.config._attn_implementation
    assert padding_free.install(model) is False
    reason = padding_free.unsupported(model)
    assert isinstance(reason, str) and "attention" in reason
    assert model.config._attn_implementation == attention
    with torch.no_grad():
        after, before = model(**batch), reference(**batch)
    for name in ("logits", "start_logits", "end_logits"):
        if name in before:
            assert torch.equal(after[name], before[name]), name
