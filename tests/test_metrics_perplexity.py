"""Sliding-window perplexity: exact values on models whose logits are known, each token scored once."""

import math

import pytest
import torch

from adapt.errors import AdaptError
from adapt.metrics import model_perplexity, perplexity_from_nll
from adapt.metrics.perplexity import sliding_windows

V = 7


class _Output:
    def __init__(self, logits):
        self.logits = logits


class UniformLM(torch.nn.Module):
    """Equal logits for all V tokens: every token costs log V, so perplexity is exactly V."""

    def forward(self, input_ids, attention_mask=None):
        return _Output(torch.zeros(*input_ids.shape, V))


class MarkovLM(torch.nn.Module):
    """Logits depend on the current token only, so any window with >= 1 token of context is exact."""

    def __init__(self):
        super().__init__()
        self.table = torch.randn(V, V, generator=torch.Generator().manual_seed(0))

    def forward(self, input_ids, attention_mask=None):
        return _Output(self.table[input_ids])


def tokenizer(text):
    return {"input_ids": [int(t) for t in text.split()]}


TEXT = " ".join(str((i * 5 + 3) % V) for i in range(23))


def test_perplexity_from_nll():
    assert perplexity_from_nll(20.0, 10) == {"perplexity": math.exp(2.0), "nll": 2.0, "tokens": 10}
    with pytest.raises(AdaptError, match="no tokens"):
        perplexity_from_nll(0.0, 0)


@pytest.mark.parametrize("max_length,stride", [(5, 5), (5, 2), (5, 1), (30, 30)])
def test_windows_score_every_token_once(max_length, stride):
    windows = sliding_windows(23, max_length, stride)
    targets = [p for _, end, first in windows for p in range(first, end)]
    assert targets == list(range(1, 23))
    assert all(end - begin - 1 <= max_length for begin, end, _ in windows)


@pytest.mark.parametrize("max_length,stride,batch_size", [(5, 5, 1), (5, 2, 3), (4, 1, 2)])
def test_uniform_model_has_perplexity_vocab_size(max_length, stride, batch_size):
    result = model_perplexity(UniformLM(), tokenizer, TEXT, max_length, stride, batch_size)
    assert result["perplexity"] == pytest.approx(V, rel=1e-6)
    assert result["tokens"] == 22 and (result["stride"], result["max_length"]) == (stride, max_length)


@pytest.mark.parametrize("max_length,stride,batch_size", [(5, 5, 1), (5, 2, 4), (3, 1, 2), (50, 10, 1)])
def test_markov_model_matches_hand_computed_nll(max_length, stride, batch_size):
    model = MarkovLM()
    ids = tokenizer(TEXT)["input_ids"]
    log_probs = torch.log_softmax(model.table, dim=-1)
    total = -sum(float(log_probs[a, b]) for a, b in zip(ids, ids[1:]))
    result = model_perplexity(model, tokenizer, TEXT, max_length, stride, batch_size)
    assert result["tokens"] == len(ids) - 1
    assert result["nll"] == pytest.approx(total / (len(ids) - 1), rel=1e-5)


def test_documents_are_scored_separately_and_token_weighted():
    model = MarkovLM()
    docs = ["1 2 3 4 5 6", "6 5", "3"]  # 5 + 1 + 0 scored tokens
    log_probs = torch.log_softmax(model.table, dim=-1)
    total = -sum(float(log_probs[a, b]) for d in docs for a, b in zip(tokenizer(d)["input_ids"], tokenizer(d)["input_ids"][1:]))
    result = model_perplexity(model, tokenizer, docs, max_length=3, stride=2, batch_size=2)
    assert result["tokens"] == 6 and result["nll"] == pytest.approx(total / 6, rel=1e-5)


def test_bad_stride():
    with pytest.raises(AdaptError, match="stride must be in 1..max_length"):
        sliding_windows(10, 4, 5)
