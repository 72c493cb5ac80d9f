"""bf16-master weights: the fp32 masters, the embedding rows the training data never uses (which skip the
optimizer and only take AdamW's weight decay), and the one-pass CPU AdamW kernel that steps them."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

from adapt.speed import fused_adamw, native
from adapt.speed.precision import TrainableWeights
from adapt.recipe import resolve_recipe
from adapt.speed import Optimization, build_optimizer
from adapt.train import linear_schedule

VOCAB, USED = 200, torch.arange(0, 60)  # 30% of the rows are used
WORD = "bert.embeddings.word_embeddings.weight"


def tiny_bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(config)


def batches(n: int) -> list[dict[str, torch.Tensor]]:
    """Batches of used tokens only, with repeats inside each batch (their gradients must be summed)."""
    generator = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(1, len(USED), (4, 9), generator=generator),
             "labels": torch.randint(0, 2, (4,), generator=generator)} for _ in range(n)]


def train(used: torch.Tensor | None, steps: int = 6, sparse: bool = True) -> tuple[TrainableWeights, torch.optim.Optimizer]:
    """`steps` bf16-master AdamW steps (weight decay 0.1, clipping at 1.0) as the training loop takes them."""
    model = tiny_bert()
    recipe = resolve_recipe("sentiment", [("train.lr", "1e-3"), ("train.weight_decay", "0.1")])
    weights = TrainableWeights(model, master=True, used_token_ids=used)
    if weights.rows:
        model.get_input_embeddings().sparse = sparse
    optimizer = build_optimizer(weights, recipe)
    scheduler = linear_schedule(optimizer, 2, steps)
    for batch in batches(steps):
        model(**batch).loss.backward()
        weights.grads_to_master()
        torch.nn.utils.clip_grad_norm_([p for _, p in weights.named_parameters()], 1.0)
        optimizer.step()
        weights.after_step(optimizer)
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
    return weights, optimizer


def test_optimizer_steps_only_the_used_rows():
    weights, optimizer = train(USED, steps=1)
    assert weights.rows is not None
    assert dict(weights.named_parameters())[WORD].shape == (len(USED), 32)
    stepped = {p.shape for group in optimizer.param_groups for p in group["params"]}
    assert (VOCAB, 32) not in stepped


@pytest.mark.parametrize("sparse", [True, False])
def test_same_weights_as_stepping_the_whole_table(sparse):
    """The unused rows end where dense AdamW leaves them (decay only); the used rows within the rounding of
    summing repeated tokens' gradients in fp32 rather than bf16. `sparse=False` is the multi-process path."""
    dense = train(None)[0].state()
    rows = train(USED, sparse=sparse)[0].state()
    assert rows.keys() == dense.keys()
    unused = torch.ones(VOCAB, dtype=torch.bool)
    unused[USED] = False
    torch.testing.assert_close(rows[WORD][unused], dense[WORD][unused], rtol=1e-6, atol=0)
    initial = tiny_bert().bert.embeddings.word_embeddings.weight.detach()[unused]
    assert not torch.equal(rows[WORD][unused], initial)  # the decay was applied
    for name in dense:
        torch.testing.assert_close(rows[name], dense[name], rtol=0, atol=2e-4)


def test_model_table_is_refreshed_by_sync_and_weights_round_trip(tmp_path):
    from safetensors.torch import save_file

    weights, _ = train(USED)
    model_table = weights.model_params[WORD]
    state = weights.state()  # syncs
    assert torch.equal(model_table, state[WORD].to(torch.bfloat16))
    save_file(state, str(tmp_path / "w.safetensors"))
    fresh = TrainableWeights(tiny_bert(), master=True, used_token_ids=USED)
    fresh.load(tmp_path / "w.safetensors")
    assert all(torch.equal(fresh.state()[n], state[n]) for n in state)
    assert torch.equal(fresh.model_params[WORD], model_table)


def test_a_token_outside_the_used_rows_fails_loudly():
    model = tiny_bert()
    weights = TrainableWeights(model, master=True, used_token_ids=USED)
    model(input_ids=torch.tensor([[1, 150, 2]]), labels=torch.tensor([0])).loss.backward()
    with pytest.raises(RuntimeError, match="out of bounds"):
        weights.grads_to_master()


def test_whole_table_when_the_rows_are_mostly_used_tied_or_unknown():
    assert TrainableWeights(tiny_bert(), master=True, used_token_ids=torch.arange(120)).rows is None
    assert TrainableWeights(tiny_bert(), master=True, used_token_ids=None).rows is None
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True))
    assert TrainableWeights(llama, master=True, used_token_ids=USED).rows is None


needs_kernel = pytest.mark.skipif(native.library() is None, reason="the native kernels are not built (make install)")


def train_through_the_loop(fused: bool, max_grad_norm: float, steps: int = 6):
    """`steps` updates through the speed layer's `Optimization.update` (the loop's), fused or on the PyTorch path. The
    pooler bias gets no gradient in the first two, so its AdamW step count lags the others'."""
    from accelerate import Accelerator

    model = tiny_bert()
    recipe = resolve_recipe("sentiment", [("train.lr", "1e-3"), ("train.weight_decay", "0.1"),
                                          ("train.max_grad_norm", str(max_grad_norm))])
    optimization = Optimization(TrainableWeights(model, master=True, used_token_ids=USED, fused=fused), recipe)
    scheduler = linear_schedule(optimization.optimizer, 2, steps)
    for step, batch in enumerate(batches(steps)):
        model(**batch).loss.backward()
        if step < 2:
            model.bert.pooler.dense.bias.grad = None
        optimization.update(model, Accelerator(cpu=True))
        scheduler.step()
    return optimization.weights, optimization.optimizer


@needs_kernel
@pytest.mark.parametrize("max_grad_norm", [1e3, 0.05])  # never clipped / clipped at every step
def test_fused_adamw_steps_as_torch_adamw(max_grad_norm):
    fused, fused_optimizer = train_through_the_loop(True, max_grad_norm)
    plain, plain_optimizer = train_through_the_loop(False, max_grad_norm)
    assert isinstance(fused_optimizer, fused_adamw.FusedMasterAdamW)
    assert not isinstance(plain_optimizer, fused_adamw.FusedMasterAdamW)
    fused_state, plain_state = fused.state(), plain.state()
    for name in plain_state:
        torch.testing.assert_close(fused_state[name], plain_state[name], rtol=0, atol=1e-5, msg=name)
        assert not torch.equal(fused_state[name], tiny_bert().state_dict()[name])  # every weight moved
    # the kernel's bf16 model weights are the masters rounded to nearest, as torch's copy_ rounds them
    for name, model_param in fused.model_params.items():
        assert torch.equal(model_param, fused_state[name].to(torch.bfloat16)), name
        assert model_param.grad is None
    # its state is AdamW's, so a checkpoint resumes under either optimizer
    plain_optimizer.load_state_dict(fused_optimizer.state_dict())
    moments = [s["exp_avg_sq"] for s in fused_optimizer.state.values()]
    assert len(moments) == len(plain_optimizer.state) and all(m.dtype == torch.float32 and m.sum() > 0 for m in moments)
    assert sorted(float(s["step"]) for s in fused_optimizer.state.values())[:2] == [4.0, 6.0]


@needs_kernel
def test_kernel_norm_and_update_are_split_across_threads_exactly():
    """Tensors of odd sizes, bf16 and fp32 gradients, laid end to end and cut into 1 or 3 thread shares."""
    import ctypes

    lib = native.library()
    generator = torch.Generator().manual_seed(0)
    sizes = [1, 17, 1000, 70_001]  # 71,019 elements: three shares of the parallel range
    grads = [torch.randn(n, generator=generator).to(torch.bfloat16 if i % 2 else torch.float32) for i, n in enumerate(sizes)]
    expected = sum(float((g.double() ** 2).sum()) for g in grads)
    arrays = (len(sizes), native.array(ctypes.c_int64, sizes),
              native.array(ctypes.c_void_p, [g.data_ptr() for g in grads]),
              native.array(ctypes.c_int32, [g.dtype == torch.bfloat16 for g in grads]))
    for threads in (1, 3):
        assert lib.adamw_sum_squares(*arrays, threads) == pytest.approx(expected, rel=1e-6)

    def update(threads: int) -> list[torch.Tensor]:
        params = [torch.ones(n) for n in sizes]
        moments = [torch.full((n,), 0.5) for n in sizes] + [torch.full((n,), 0.25) for n in sizes]
        outs = [torch.empty(n, dtype=torch.bfloat16) for n in sizes]
        pointers = [native.array(ctypes.c_void_p, [t.data_ptr() for t in ts])
                    for ts in (params, moments[:4], moments[4:], grads)]
        lib.adamw_step(len(sizes), arrays[1], *pointers, arrays[3],
                       native.array(ctypes.c_void_p, [o.data_ptr() for o in outs]),
                       0.999, 0.5, 0.9, 0.999, 1e-8, 1e-3, 0.1, threads)
        return params + moments + outs

    one, three = update(1), update(3)
    assert all(torch.equal(a, b) for a, b in zip(one, three))
    assert not torch.equal(one[0], torch.ones(1))


def test_fused_adamw_can_be_switched_off(monkeypatch):
    from adapt.speed import optimization

    monkeypatch.setenv(native.SWITCH_VARIABLE, "0")
    native.library.cache_clear()
    try:
        features = __import__("datasets").Dataset.from_dict({"input_ids": [[1, 2, 3]]})
        recipe = resolve_recipe("sentiment", [])
        weights = optimization(tiny_bert(), recipe, "bf16-master", features, [0]).weights
        assert weights.master and not weights.fused
    finally:
        monkeypatch.undo()
        native.library.cache_clear()
