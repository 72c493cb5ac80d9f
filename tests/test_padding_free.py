"""Padding-free training through transformers' attention registry computes what transformers' padded forward
computes: logits and gradients on ragged batches for encoder heads and a decoder, packed documents kept apart,
batches it must not touch left alone, saved files unchanged; and the CPU kernels (dropout, packed attention)."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from transformers import (AutoModelForSequenceClassification, BertConfig, BertForQuestionAnswering,
                          BertForSequenceClassification, BertForTokenClassification, DebertaV2Config,
                          DebertaV2ForSequenceClassification, LlamaConfig, LlamaForCausalLM, RobertaConfig,
                          RobertaForSequenceClassification)

from adapt.speed import cpu_kernels, native, padding_free

BERT = dict(vocab_size=120, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=40, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def tiny(head):
    """A tiny random model of `head`'s class, dropout off."""
    torch.manual_seed(0)
    if head is LlamaForCausalLM:  # grouped-query attention: 4 query heads on 2 key/value heads
        return head(LlamaConfig(vocab_size=120, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, attention_dropout=0.0))
    if head is RobertaForSequenceClassification:
        return head(RobertaConfig(**BERT, pad_token_id=1, num_labels=3))
    return head(BertConfig(**BERT, num_labels=2 if head is BertForQuestionAnswering else 3))


def twins(head):
    """transformers' padded forward (sdpa) and the same weights with padding-free installed."""
    reference = tiny(head)
    fast = copy.deepcopy(reference)
    assert padding_free.install(fast)
    for model in (reference, fast):
        model.train()  # dropout is 0: training mode must agree too
    return reference, fast


def ragged_batch(with_token_types: bool = False, lengths=(9, 4, 1, 6)) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    ids = torch.randint(3, 120, (len(lengths), max(lengths)))
    mask = torch.tensor([[1] * n + [0] * (max(lengths) - n) for n in lengths])
    batch = {"input_ids": ids * mask + 1 * (1 - mask), "attention_mask": mask}  # pad id 1 (RoBERTa's)
    if with_token_types:
        batch["token_type_ids"] = torch.tensor([[0] * (n // 2) + [1] * (max(lengths) - n // 2) for n in lengths]) * mask
    return batch


def on_real_tokens(out, mask: torch.Tensor) -> list[torch.Tensor]:
    if hasattr(out, "start_logits"):
        return [out.start_logits[mask.bool()], out.end_logits[mask.bool()]]
    return [out.logits[mask.bool()] if out.logits.dim() == 3 else out.logits]


class AttentionCalls:
    """Records the query shape and cu_seq_lens_q of every call of the registered attention function."""

    def __init__(self, monkeypatch):
        self.calls = []
        attend = padding_free.varlen_attention

        def spy(module, query, *args, **kwargs):
            self.calls.append((tuple(query.shape), kwargs.get("cu_seq_lens_q")))
            return attend(module, query, *args, **kwargs)

        monkeypatch.setitem(padding_free.AttentionInterface._global_mapping, padding_free.ATTENTION, spy)


needs_kernels = pytest.mark.skipif(native.library() is None, reason="the native kernels are not built (make install)")


@pytest.fixture(params=["native attention", "padded attention"])
def attention_path(request, monkeypatch):
    """Each test that uses it runs on the native attention kernel (where built) and on the generic exact path."""
    if request.param == "padded attention":
        monkeypatch.setenv(native.SWITCH_VARIABLE, "0")
    elif native.library() is None:
        pytest.skip("the native kernels are not built (make install)")
    native.library.cache_clear()
    yield request.param
    native.library.cache_clear()


@pytest.mark.parametrize("head,with_token_types", [
    (BertForSequenceClassification, False), (BertForSequenceClassification, True), (BertForTokenClassification, True),
    (BertForQuestionAnswering, False), (RobertaForSequenceClassification, False), (LlamaForCausalLM, False)])
def test_same_outputs_and_gradients_as_transformers(head, with_token_types, attention_path, monkeypatch):
    reference, fast = twins(head)
    batch = ragged_batch(with_token_types)
    spy = AttentionCalls(monkeypatch)
    expected = on_real_tokens(reference(**batch), batch["attention_mask"])
    actual = on_real_tokens(fast(**batch), batch["attention_mask"])
    assert spy.calls and all(shape[2] == 20 and cu.tolist() == [0, 9, 13, 14, 20] for shape, cu in spy.calls)
    for e, a in zip(expected, actual):
        assert a.shape == e.shape
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5)
    sum(t.square().sum() for t in expected).backward()
    sum(t.square().sum() for t in actual).backward()
    grads = dict(fast.named_parameters())
    compared = 0
    for name, param in reference.named_parameters():
        if param.grad is not None and param.grad.abs().max() > 0:
            torch.testing.assert_close(grads[name].grad, param.grad, atol=1e-5, rtol=1e-4, msg=name)
            compared += 1
    assert compared > 10


def test_padded_outputs_are_zero_at_pads_and_the_pooler_reads_the_first_token():
    reference, fast = twins(BertForSequenceClassification)
    batch = ragged_batch()
    out = fast.bert(**batch)
    assert out.last_hidden_state.shape == (4, 9, 32)
    assert out.last_hidden_state[~batch["attention_mask"].bool()].abs().max() == 0
    torch.testing.assert_close(out.pooler_output, reference.bert(**batch).pooler_output, atol=1e-5, rtol=1e-5)


def test_packed_documents_equal_the_documents_one_by_one(attention_path):
    """A plain-text row of three documents (position_ids restarting, no attention_mask) attends per document."""
    reference, fast = twins(LlamaForCausalLM)
    torch.manual_seed(2)
    documents = [torch.randint(3, 120, (1, n)) for n in (5, 7, 3)]
    row = torch.cat(documents, 1)
    positions = torch.cat([torch.arange(d.shape[1]) for d in documents]).unsqueeze(0)
    packed = fast(input_ids=row, position_ids=positions).logits
    one_by_one = torch.cat([reference(input_ids=d).logits for d in documents], 1)
    torch.testing.assert_close(packed, one_by_one, atol=1e-5, rtol=1e-5)
    bert_reference, bert = twins(BertForTokenClassification)
    packed = bert(input_ids=row, position_ids=positions).logits
    one_by_one = torch.cat([bert_reference(input_ids=d).logits for d in documents], 1)
    torch.testing.assert_close(packed, one_by_one, atol=1e-5, rtol=1e-5)


def test_left_padding_and_generation_are_left_to_transformers(monkeypatch):
    reference, fast = twins(LlamaForCausalLM)
    reference.eval(), fast.eval()
    spy = AttentionCalls(monkeypatch)
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    ids = torch.randint(3, 120, (2, 5))
    torch.testing.assert_close(fast(input_ids=ids, attention_mask=mask).logits,
                               reference(input_ids=ids, attention_mask=mask).logits)
    generated = fast.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(generated, reference.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4,
                                                     do_sample=False, pad_token_id=0))
    assert spy.calls and all(cu is None for _, cu in spy.calls)  # never flattened
    assert {shape[0] for shape, _ in spy.calls} == {2}


def test_installed_model_saves_a_plain_transformers_model(tmp_path):
    reference, fast = twins(BertForSequenceClassification)
    fast.save_pretrained(tmp_path)
    assert "adapt_varlen" not in (tmp_path / "config.json").read_text()
    assert "attn_implementation" not in json.loads((tmp_path / "config.json").read_text())
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert loaded.config._attn_implementation == "sdpa"
    batch = ragged_batch()
    reference.eval(), loaded.eval()
    torch.testing.assert_close(loaded(**batch).logits, reference(**batch).logits)


def test_install_refuses_architectures_outside_the_registry_and_is_idempotent():
    deberta = DebertaV2ForSequenceClassification(DebertaV2Config(
        vocab_size=120, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64))
    assert "registry" in padding_free.unsupported(deberta)
    assert padding_free.install(deberta) is False
    assert not deberta._forward_pre_hooks and not deberta.deberta._forward_pre_hooks
    _, fast = twins(BertForTokenClassification)
    assert padding_free.unsupported(fast) is None
    assert padding_free.install(fast) is True
    assert len(fast.bert._forward_pre_hooks) == 1  # installed once


@pytest.mark.parametrize("causal,window,kv_heads", [(False, None, 4), (True, None, 2), (False, 3, 4), (True, 2, 1)])
def test_varlen_attention_equals_sdpa_per_sequence(causal, window, kv_heads, attention_path):
    """Packed sequences against F.scaled_dot_product_attention run on each sequence alone (with the causal /
    |q - k| < window pattern), grouped-query heads included."""
    torch.manual_seed(3)
    lengths, heads, d = [5, 1, 8], 4, 8
    tokens = sum(lengths)
    q = torch.randn(1, heads, tokens, d, requires_grad=True)
    k, v = (torch.randn(1, kv_heads, tokens, d, requires_grad=True) for _ in range(2))
    cu = torch.tensor([0, 5, 6, 14], dtype=torch.int32)
    module = torch.nn.Module()
    module.is_causal = causal
    out, weights = padding_free.varlen_attention(module, q, k, v, None, scaling=0.3, cu_seq_lens_q=cu, cu_seq_lens_k=cu,
                                                 max_length_q=8, max_length_k=8, sliding_window=window)
    assert weights is None and out.shape == (1, tokens, heads, d)
    expected = []
    for s in range(3):
        rows = slice(int(cu[s]), int(cu[s + 1]))
        n = rows.stop - rows.start
        i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
        allowed = torch.ones(n, n, dtype=torch.bool)
        if causal:
            allowed &= j <= i
        if window is not None:
            allowed &= (i - j).abs() < window
        expected.append(F.scaled_dot_product_attention(q[:, :, rows], k[:, :, rows], v[:, :, rows], attn_mask=allowed,
                                                       scale=0.3, enable_gqa=True).transpose(1, 2))
    expected = torch.cat(expected, 1)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    grad = torch.randn_like(out)
    for a, e in zip(torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(expected, (q, k, v), grad)):
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_padding_free_matches_sdpa(dtype):
    """On a GPU (varlen kernel in bf16 where PyTorch or flash-attn has one, the exact SDPA path otherwise): a
    tiny Llama's and BERT's padding-free logits and gradients equal the padded sdpa forward."""
    atol = 1e-5 if dtype == torch.float32 else 2e-2
    for head in (LlamaForCausalLM, BertForTokenClassification):
        reference, fast = (m.to("cuda", dtype) for m in twins(head))
        batch = {k: v.cuda() for k, v in ragged_batch().items()}
        expected = on_real_tokens(reference(**batch), batch["attention_mask"])[0]
        actual = on_real_tokens(fast(**batch), batch["attention_mask"])[0]
        torch.testing.assert_close(actual.float(), expected.float(), atol=atol, rtol=atol)
        expected.float().square().sum().backward()
        actual.float().square().sum().backward()
        grads = dict(fast.named_parameters())
        # relative to the model's largest gradient: some (key biases) are zero up to rounding
        scale = max(p.grad.float().abs().max().item() for p in reference.parameters() if p.grad is not None)
        for name, param in reference.named_parameters():
            if param.grad is not None:
                torch.testing.assert_close(grads[name].grad.float() / scale, param.grad.float() / scale,
                                           atol=atol, rtol=atol, msg=name)


def test_the_hooks_still_flatten_under_peft(monkeypatch):
    from peft import LoraConfig, get_peft_model

    reference, fast = twins(BertForSequenceClassification)
    lora = LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"], init_lora_weights=False)
    torch.manual_seed(5)
    reference = get_peft_model(reference, lora)
    torch.manual_seed(5)
    fast = get_peft_model(fast, lora)
    spy = AttentionCalls(monkeypatch)
    batch = ragged_batch()
    torch.testing.assert_close(fast(**batch).logits, reference(**batch).logits, atol=1e-5, rtol=1e-5)
    assert spy.calls and all(cu is not None and cu.tolist() == [0, 9, 13, 14, 20] for _, cu in spy.calls)


def test_install_gives_dropout_modules_the_fast_cpu_sampling():
    model = BertForSequenceClassification(BertConfig(**{**BERT, "hidden_dropout_prob": 0.1}))
    assert padding_free.install(model)
    layer_dropout = model.bert.encoder.layer[0].output.dropout
    x = torch.ones(1000, 32)
    torch.manual_seed(4)
    y = layer_dropout(x)
    torch.manual_seed(4)
    assert torch.equal(y, cpu_kernels.dropout(x, 0.1, True))
    layer_dropout.eval()
    assert layer_dropout(x) is x


def test_cpu_dropout_rate_scale_and_seed():
    x = torch.ones(400_000, dtype=torch.bfloat16)
    torch.manual_seed(3)
    y = cpu_kernels.dropout(x, 0.1, True)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 0.1) < 0.003  # 6554/65536 = 0.100006; binomial sd 0.0005
    assert set(y.float().unique().tolist()) == {0.0, torch.tensor(1 / 0.9, dtype=torch.bfloat16).item()}
    torch.manual_seed(3)
    assert torch.equal(cpu_kernels.dropout(x, 0.1, True), y)  # the global seed decides, as for F.dropout
    assert cpu_kernels.dropout(x, 0.1, False) is x
    assert cpu_kernels.dropout(x, 0.0, True) is x
    odd = torch.ones(3, 5)  # not a multiple of four elements
    assert cpu_kernels.dropout(odd, 0.5, True).shape == (3, 5)


@needs_kernels
def test_native_bf16_dropout_is_the_pytorch_arithmetic_in_one_pass():
    """The C kernel's output and gradient are exactly `where(keep, x, 0) * scale` for its mask; the mask
    follows torch's seed, and does not depend on how many threads share the work."""
    x = torch.randn(70_001, dtype=torch.bfloat16, requires_grad=True)  # two thread shares and a ragged tail
    torch.manual_seed(5)
    y = cpu_kernels.dropout(x, 0.1, True)
    keep = y.detach() != 0
    assert abs(1 - keep.float().mean().item() - 0.1) < 0.005
    assert torch.equal(y.detach(), torch.where(keep, x.detach(), 0) * (1 / 0.9))
    grad = torch.randn_like(y)
    y.backward(grad)
    assert torch.equal(x.grad, torch.where(keep, grad, 0) * (1 / 0.9))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        torch.manual_seed(5)
        assert torch.equal(cpu_kernels.dropout(x, 0.1, True), y)
    finally:
        torch.set_num_threads(threads)
    assert not torch.equal(cpu_kernels.dropout(x, 0.1, True), y)  # the next draw of the generator: a new mask


def test_dropout_gradient_matches_its_mask():
    torch.manual_seed(4)
    x = torch.randn(6, 8, requires_grad=True)
    y = cpu_kernels.dropout(x, 0.25, True)
    y.sum().backward()
    kept = y.detach() != 0
    torch.testing.assert_close(x.grad, kept.float() / 0.75)


def packed_attention_inputs(lengths, heads, head_size, dtype=torch.float32):
    torch.manual_seed(7)
    rows = sum(lengths)
    q, k, v = (torch.randn(rows, heads * head_size, dtype=dtype, requires_grad=True) for _ in range(3))
    starts = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    return q, k, v, starts


def reference_attention(q, k, v, starts, heads, scale, keep, p):
    """Attention per sequence and head in float64, with the dropout mask `keep` [rows, heads, keys]."""
    out = []
    for s in range(len(starts) - 1):
        rows = slice(int(starts[s]), int(starts[s + 1]))
        split = [x[rows].double().view(rows.stop - rows.start, heads, -1).transpose(0, 1) for x in (q, k, v)]
        probs = (split[0] @ split[1].transpose(1, 2) * scale).softmax(-1)  # [heads, queries, keys]
        probs = probs * keep[rows, :, :rows.stop - rows.start].transpose(0, 1) / (1 - p)
        out.append((probs @ split[2]).transpose(0, 1).reshape(rows.stop - rows.start, -1))
    return torch.cat(out)


@needs_kernels
def test_native_attention_matches_attention_with_its_dropout_mask():
    """Forward and all three gradients against float64 attention with the kernel's own dropout mask, read
    back by attending over one-hot values: with v_j = e_j, a query's output is its dropped-out probabilities."""
    lengths, heads, head_size, p, scale = [7, 3, 12], 2, 12, 0.3, 0.4
    q, k, v, starts = packed_attention_inputs(lengths, heads, head_size)
    one_hot = torch.cat([torch.eye(n, head_size).repeat(1, heads) for n in lengths])
    torch.manual_seed(11)
    weights = cpu_kernels.NativeAttention.apply(q, k, one_hot, starts, starts, heads, scale, p)
    keep = weights.detach().view(-1, heads, head_size) != 0
    assert 0.5 < keep[:7, :, :7].float().mean() < 0.9  # keys past a sequence's end read as dropped
    torch.manual_seed(11)  # the same generator state: the same mask
    out = cpu_kernels.NativeAttention.apply(q, k, v, starts, starts, heads, scale, p)
    expected = reference_attention(q, k, v, starts, heads, scale, keep, p)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
    grad = torch.randn_like(out)
    actual = torch.autograd.grad(out, (q, k, v), grad)
    wanted = torch.autograd.grad(expected, (q, k, v), grad.double())
    for name, a, e in zip("qkv", actual, wanted):  # float32, as the inputs
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5, msg=lambda m: f"{name}: {m}")


@needs_kernels
def test_native_attention_dropout_rate_threads_and_first_token_queries():
    lengths, heads, head_size = [40, 17, 64, 1, 33], 3, 64
    q, k, v, starts = packed_attention_inputs(lengths, heads, head_size, torch.bfloat16)
    attend = cpu_kernels.NativeAttention.apply
    torch.manual_seed(2)
    out = attend(q, k, v, starts, starts, heads, head_size ** -0.5, 0.1)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        torch.manual_seed(2)
        assert torch.equal(attend(q, k, v, starts, starts, heads, head_size ** -0.5, 0.1), out)
    finally:
        torch.set_num_threads(threads)
    one_hot = torch.cat([torch.eye(n, head_size).repeat(1, heads) for n in lengths]).to(torch.bfloat16)
    weights = attend(q, k, one_hot, starts, starts, heads, head_size ** -0.5, 0.1).view(-1, heads, 64)
    real = torch.cat([torch.arange(64) < n for n in lengths for _ in range(n)]).view(-1, 1, 64).expand_as(weights)
    dropped = (weights[real] == 0).float().mean().item()
    assert abs(dropped - 0.1) < 0.01  # 26,553 probabilities; binomial sd 0.0018
    # each sequence's first token alone as queries: the same rows as the full computation without dropout
    full = attend(q, k, v, starts, starts, heads, head_size ** -0.5, 0.0)
    first = attend(q[starts[:-1]], k, v, torch.arange(len(lengths) + 1), starts, heads, head_size ** -0.5, 0.0)
    assert torch.equal(first, full[starts[:-1]])
    out.float().square().sum().backward()
    assert all(x.grad is not None and x.grad.dtype == torch.bfloat16 and x.grad.isfinite().all() for x in (q, k, v))


def test_labels_given_to_the_model_get_transformers_own_loss_on_the_padded_batch():
    """A caller passing labels (transformers computes the loss inside the forward) gets the padded forward's loss:
    the batch is left padded, and a call without labels is flattened again."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=0)
    reference = LlamaForCausalLM(config).eval()
    model = copy.deepcopy(reference)
    assert padding_free.install(model)
    input_ids = torch.randint(1, 64, (3, 7))
    mask = (torch.arange(7) < torch.tensor([7, 4, 2])[:, None]).long()
    labels = input_ids.masked_fill(mask == 0, -100)
    expected = reference(input_ids=input_ids, attention_mask=mask, labels=labels).loss
    assert torch.allclose(model(input_ids=input_ids, attention_mask=mask, labels=labels).loss, expected, atol=1e-6)
    seen = []
    handle = model.model.embed_tokens.register_forward_hook(lambda m, a, out: seen.append(a[0].shape))
    model(input_ids=input_ids, attention_mask=mask)
    handle.remove()
    assert seen == [torch.Size([1, 13])]  # flattened: 7 + 4 + 2 real tokens


# ---- bucketed packed lengths (oneDNN compiles a kernel per matmul shape) --------------------------------
def test_packed_lengths_round_up_to_a_few_buckets():
    assert [padding_free.packed_length(n) for n in (1, 5, 16, 17, 20, 255, 256, 257, 416, 417, 1000, 4097)] == [
        16, 16, 16, 32, 32, 256, 256, 288, 416, 448, 1024, 4608]
    lengths = {padding_free.packed_length(n) for n in range(257, 513)}
    assert len(lengths) == 8 and all(0 <= padding_free.packed_length(n) - n < n / 8 for n in range(128, 5000))


def test_bucketing_applies_to_bf16_compute_on_cpu_only():
    cpu = torch.device("cpu")
    assert padding_free.buckets_shapes(cpu, torch.bfloat16) and padding_free.buckets_shapes(cpu, torch.float16)
    assert not padding_free.buckets_shapes(cpu, torch.float32)
    assert not padding_free.buckets_shapes(torch.device("cuda"), torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert padding_free.buckets_shapes(cpu, torch.float32)


@pytest.mark.parametrize("head,with_token_types", [
    (BertForSequenceClassification, True), (BertForTokenClassification, False), (BertForQuestionAnswering, False),
    (RobertaForSequenceClassification, False), (LlamaForCausalLM, False)])
def test_filler_tokens_change_no_output_or_gradient(head, with_token_types, attention_path, monkeypatch):
    """Bucketing forced on in fp32: the packed row grows from 20 to 32 tokens by filler sequences no longer than
    the longest real one (9), and the real tokens' outputs and every gradient equal transformers' padded forward."""
    monkeypatch.setattr(padding_free, "buckets_shapes", lambda device, dtype: True)
    reference, fast = twins(head)
    batch = ragged_batch(with_token_types)
    spy = AttentionCalls(monkeypatch)
    expected = on_real_tokens(reference(**batch), batch["attention_mask"])
    actual = on_real_tokens(fast(**batch), batch["attention_mask"])
    assert spy.calls and all(shape[2] == 32 and cu.tolist() == [0, 9, 13, 14, 20, 29, 32] for shape, cu in spy.calls)
    for e, a in zip(expected, actual):
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5)
    sum(t.square().sum() for t in expected).backward()
    sum(t.square().sum() for t in actual).backward()
    grads = dict(fast.named_parameters())
    for name, param in reference.named_parameters():
        if param.grad is not None:
            torch.testing.assert_close(grads[name].grad, param.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_bf16_models_pack_to_bucketed_lengths_and_mixture_of_experts_models_do_not(monkeypatch):
    from transformers import MixtralConfig, MixtralForCausalLM

    reference, fast = twins(BertForSequenceClassification)
    reference, fast = reference.to(torch.bfloat16), fast.to(torch.bfloat16)
    batch = ragged_batch()
    spy = AttentionCalls(monkeypatch)
    torch.testing.assert_close(fast(**batch).logits, reference(**batch).logits, atol=2e-2, rtol=2e-2)
    assert {shape[2] for shape, _ in spy.calls} == {32}
    torch.manual_seed(0)
    moe = MixtralForCausalLM(MixtralConfig(vocab_size=120, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                                           num_experts_per_tok=2)).to(torch.bfloat16)
    assert padding_free.install(moe)
    spy.calls.clear()
    moe(**ragged_batch())  # the router's load-balancing statistics would count filler tokens
    assert {shape[2] for shape, _ in spy.calls} == {20}


@pytest.mark.parametrize("head", [BertForSequenceClassification, RobertaForSequenceClassification])
def test_a_first_token_classifier_runs_its_last_layer_after_attention_on_first_tokens_only(head, attention_path):
    """[CLS]/<s> heads: the last layer's output projection and feed-forward see one row per sequence (4, not
    20 tokens), and logits and every gradient still equal transformers' padded forward; other layers and a
    call asking for hidden states see every token."""
    reference, fast = twins(head)
    batch = ragged_batch()
    rows = {}
    for name, module in fast.named_modules():
        if name.endswith("attention.output.dense"):
            module.register_forward_hook(lambda m, args, out, name=name: rows.__setitem__(name, args[0].shape[1]))
    torch.testing.assert_close(fast(**batch).logits, reference(**batch).logits, atol=1e-5, rtol=1e-5)
    assert list(rows.values()) == [20, 20, 4]
    fast(**batch).logits.square().sum().backward()
    reference(**batch).logits.square().sum().backward()
    grads = dict(fast.named_parameters())
    for name, param in reference.named_parameters():
        if param.grad is not None:
            torch.testing.assert_close(grads[name].grad, param.grad, atol=1e-5, rtol=1e-4, msg=name)
    out = fast(**batch, output_hidden_states=True)
    assert list(rows.values()) == [20, 20, 20]
    real = batch["attention_mask"].bool()
    expected = reference(**batch, output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(out.hidden_states[-1][real], expected[real], atol=1e-5, rtol=1e-5)
    assert padding_free.first_token_layer(tiny(BertForTokenClassification)) is None
