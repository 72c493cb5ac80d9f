"""The padding-free BERT forward computes what transformers' forward computes: logits and gradients on
ragged batches for every encoder head adapt uses, the fallbacks, and the CPU dropout's statistics."""

import pytest
import torch
from transformers import (BertConfig, BertForQuestionAnswering, BertForSequenceClassification,
                          BertForTokenClassification, LlamaConfig, LlamaForCausalLM)

from adapt.speed import cpu_kernels, native, padding_free


def tiny_config(num_labels: int = 3) -> BertConfig:
    return BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
                      max_position_embeddings=32, num_labels=num_labels, hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0)


def twin_models(head, first_token_only: bool):
    """The same random weights twice: transformers' forward, and the padding-free one."""
    torch.manual_seed(0)
    labels = 2 if head is BertForQuestionAnswering else 3  # QA heads score start and end
    reference = head(tiny_config(labels))
    fast = head(tiny_config(labels))
    fast.load_state_dict(reference.state_dict())
    assert padding_free.install(fast, first_token_only=first_token_only)
    return reference, fast


def ragged_batch(with_token_types: bool) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    lengths = [9, 4, 1, 6]
    ids = torch.randint(1, 120, (len(lengths), max(lengths)))
    mask = torch.tensor([[1] * n + [0] * (max(lengths) - n) for n in lengths])
    batch = {"input_ids": ids * mask, "attention_mask": mask}
    if with_token_types:
        batch["token_type_ids"] = torch.tensor([[0] * (n // 2) + [1] * (max(lengths) - n // 2) for n in lengths]) * mask
    return batch


def outputs_on_real_tokens(out, mask: torch.Tensor) -> list[torch.Tensor]:
    if hasattr(out, "start_logits"):
        return [out.start_logits[mask.bool()], out.end_logits[mask.bool()]]
    logits = out.logits
    return [logits[mask.bool()] if logits.dim() == 3 else logits]


needs_kernels = pytest.mark.skipif(native.library() is None, reason="the native kernels are not built (make install)")


@pytest.fixture(params=["native attention", "padded attention"])
def attention_path(request, monkeypatch):
    """Each test that uses it runs on the native attention kernel (where built) and on the padded layout."""
    if request.param == "padded attention":
        monkeypatch.setenv(native.SWITCH_VARIABLE, "0")
    elif native.library() is None:
        pytest.skip("the native kernels are not built (make install)")
    native.library.cache_clear()
    yield request.param
    native.library.cache_clear()


@pytest.mark.parametrize("head,first_token_only", [
    (BertForSequenceClassification, True), (BertForSequenceClassification, False),
    (BertForTokenClassification, False), (BertForQuestionAnswering, False)])
@pytest.mark.parametrize("with_token_types", [False, True])
def test_same_outputs_and_gradients_as_transformers(head, first_token_only, with_token_types, attention_path):
    reference, fast = twin_models(head, first_token_only)
    batch = ragged_batch(with_token_types)
    for model in (reference, fast):
        model.train()  # dropout is 0: training mode must agree too
    expected = outputs_on_real_tokens(reference(**batch), batch["attention_mask"])
    actual = outputs_on_real_tokens(fast(**batch), batch["attention_mask"])
    for e, a in zip(expected, actual):
        assert a.shape == e.shape
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5)
    sum(t.square().sum() for t in expected).backward()
    sum(t.square().sum() for t in actual).backward()
    grads = {n: p.grad for n, p in fast.named_parameters() if p.grad is not None}
    for name, param in reference.named_parameters():
        if param.grad is not None and param.grad.abs().max() > 0:
            torch.testing.assert_close(grads[name], param.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_first_token_only_skips_the_rest_of_the_last_layer():
    _, fast = twin_models(BertForSequenceClassification, True)
    batch = ragged_batch(False)
    hidden = fast.bert(**batch).last_hidden_state
    assert hidden.shape == (4, 1, 32)  # one state per row: the [CLS] position


def test_left_padding_and_unsupported_calls_fall_back_to_transformers():
    reference, fast = twin_models(BertForSequenceClassification, True)
    reference.eval(), fast.eval()
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    ids = torch.randint(1, 120, (2, 5))
    torch.testing.assert_close(fast(input_ids=ids, attention_mask=mask).logits,
                               reference(input_ids=ids, attention_mask=mask).logits)
    out = fast.bert(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    assert len(out.hidden_states) == 4  # embeddings + 3 layers: transformers' own forward answered


def test_gradient_checkpointing_uses_the_transformers_forward():
    _, fast = twin_models(BertForSequenceClassification, True)
    fast.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    fast.train()
    batch = ragged_batch(False)
    assert fast.bert(**batch).last_hidden_state.shape == (4, 9, 32)  # every position: the padded forward ran


def test_install_only_on_supported_encoders_and_once():
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=4))
    forward = llama.model.forward
    assert padding_free.install(llama) is False
    assert llama.model.forward == forward
    _, fast = twin_models(BertForTokenClassification, False)
    assert padding_free.install(fast) is False  # already installed


def test_installed_model_saves_the_standard_weights(tmp_path):
    reference, fast = twin_models(BertForSequenceClassification, True)
    fast.save_pretrained(tmp_path)
    loaded = BertForSequenceClassification.from_pretrained(tmp_path)
    assert set(loaded.state_dict()) == set(reference.state_dict())


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
