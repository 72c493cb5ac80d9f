"""bf16-master weights: the fp32 masters, and the embedding rows the training data never uses, which skip the
optimizer and only take AdamW's weight decay."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

from adapt.precision import TrainableWeights
from adapt.recipe import resolve_recipe
from adapt.train import build_optimizer, linear_schedule

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
    optimizer = build_optimizer(weights.named_parameters(), recipe)
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


def test_whole_table_when_the_rows_are_mostly_used_tied_or_not_mastered():
    assert TrainableWeights(tiny_bert(), master=True, used_token_ids=torch.arange(120)).rows is None
    assert TrainableWeights(tiny_bert(), master=False, used_token_ids=USED).rows is None
    assert TrainableWeights(tiny_bert(), master=True, used_token_ids=None).rows is None
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True))
    assert TrainableWeights(llama, master=True, used_token_ids=USED).rows is None
