"""A padding-free forward for BERT-family encoders (BERT, MiniLM, ...), installed on a loaded
transformers model without changing its weights, classes or saved files.

Dynamic padding still leaves ~12% pad tokens in length-grouped SST-2 batches, and transformers runs every
linear layer, norm, activation and dropout on them. Here those run on the real tokens only (packed into
one [tokens, hidden] matrix). On CPU with the native kernels built (`adapt.native`), attention runs on the
packed rows too, given each sequence's first row; elsewhere it runs on the padded [batch, heads, length,
length] layout with a key mask (SDPA on GPU). For sequence classification, which reads nothing but the
first token's final state, the last layer computes queries, attention output and feed-forward for that
token alone. On CPUs dropout draws 64 random bits per four elements instead of one Bernoulli draw per
element (the latter was ~10% of a MiniLM training step), and bf16 dropout runs as one C kernel
(`adapt.native`) that draws, masks and scales in a single pass.

The numbers are those of the transformers forward (tests compare logits and gradients); anything this
path does not cover (decoder use, caches, requested attentions or hidden states, gradient checkpointing,
left padding with first-token-only) goes to the original forward."""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndCrossAttentions

from adapt.speed import native
from adapt.speed.cpu_kernels import NativeAttention, dropout

SUPPORTED_MODEL_TYPES = ("bert",)


def install(model: torch.nn.Module, first_token_only: bool = False) -> bool:
    """Route `model`'s encoder through the padding-free forward; False (and nothing changed) when the
    architecture is not one this module implements. `first_token_only`: the task reads only the first
    token's final hidden state (and the pooler on it), as sequence classification heads do."""
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in SUPPORTED_MODEL_TYPES or config.is_decoder:
        return False
    encoder = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if encoder is None or not hasattr(encoder, "embeddings") or hasattr(encoder, "_padded_forward"):
        return False
    encoder._padded_forward = encoder.forward
    encoder._first_token_only = first_token_only
    encoder.forward = types.MethodType(padding_free_forward, encoder)
    return True


def install_for_task(model: torch.nn.Module, task) -> bool:
    """`install` as the task's recipe asks (`train.padding_free`), reading only what the task's head reads."""
    return task.recipe.train.padding_free and install(model, first_token_only=task.first_token_only)


class Packing:
    """Where a [batch, length] batch's real tokens sit once packed into [tokens, hidden] rows, and the
    attention over them: on CPU (bf16 or fp32) the native kernel on the packed rows, otherwise matmuls or
    SDPA on the padded [batch, heads, length, head] layout with an additive key mask. On a 2-core CPU the
    kernel's forward and backward with dropout took 0.65x the padded path's time at 16 tokens per sequence
    and 0.24x at 512; the forward alone 0.36-0.94x (benchmarks/bench_attention.py)."""

    def __init__(self, attention_mask: torch.Tensor):
        self.batch, self.length = attention_mask.shape
        self.real = attention_mask.bool()
        self.token_index = self.real.reshape(-1).nonzero().squeeze(1)  # positions of the real tokens, flattened
        self.starts = F.pad(self.real.sum(1).cumsum(0), (1, 0))  # row b's tokens are packed rows starts[b]:starts[b+1]
        self._key_bias: dict[torch.dtype, torch.Tensor] = {}

    def key_bias(self, dtype: torch.dtype) -> torch.Tensor:
        """The padded layout's additive key mask, shaped for [batch, heads, queries, keys] scores; built once
        per forward and dtype, shared by the layers."""
        if dtype not in self._key_bias:
            bias = torch.zeros(self.batch, 1, 1, self.length, dtype=dtype, device=self.real.device)
            self._key_bias[dtype] = bias.masked_fill_(~self.real.view(self.batch, 1, 1, self.length),
                                                      torch.finfo(dtype).min)
        return self._key_bias[dtype]

    def attend(self, attention, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
               first_tokens_only: bool, p: float) -> torch.Tensor:
        """Packed context rows for packed queries (all tokens, or each row's first token), keys and values."""
        heads, head_size = attention.num_attention_heads, attention.attention_head_size
        if (queries.device.type == "cpu" and queries.dtype == keys.dtype == values.dtype
                and queries.dtype in (torch.bfloat16, torch.float32) and native.library() is not None):
            q_starts = torch.arange(self.batch + 1) if first_tokens_only else self.starts
            return NativeAttention.apply(queries, keys, values, q_starts, self.starts, heads, attention.scaling, p)
        batch, length = self.batch, self.length

        def to_heads(x: torch.Tensor) -> torch.Tensor:  # packed [tokens, hidden] -> [batch, heads, length, head]
            padded = x.new_zeros(batch * length, x.shape[-1]).index_copy(0, self.token_index, x)
            return padded.view(batch, length, heads, head_size).transpose(1, 2)

        keys, values = to_heads(keys), to_heads(values)
        if first_tokens_only:
            queries = queries.view(batch, 1, heads, head_size).transpose(1, 2)
        else:
            queries = to_heads(queries)
        key_bias = self.key_bias(queries.dtype)
        if p and queries.device.type == "cpu":
            scores = torch.matmul(queries, keys.transpose(2, 3)) * attention.scaling + key_bias
            probs = dropout(scores.softmax(-1), p, True)
            context = torch.matmul(probs, values)
        else:
            context = F.scaled_dot_product_attention(queries, keys, values, attn_mask=key_bias, dropout_p=p,
                                                     scale=attention.scaling)
        context = context.transpose(1, 2).reshape(-1, heads * head_size)
        return context if first_tokens_only else context.index_select(0, self.token_index)


def padding_free_forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                         inputs_embeds=None, **kwargs):
    """Replacement for BertModel.forward (bound to the model's encoder by `install`)."""
    unsupported = (inputs_embeds is not None or input_ids is None or self.gradient_checkpointing
                   or any(v is not None and v is not False for k, v in kwargs.items() if k != "return_dict"))
    if attention_mask is None and input_ids is not None:
        attention_mask = torch.ones_like(input_ids)
    first_token_only = self._first_token_only
    if not unsupported and first_token_only and not bool(attention_mask[:, 0].all()):
        unsupported = True  # left padding: position 0 is a pad, which this path does not compute
    if unsupported:
        return self._padded_forward(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                                    position_ids=position_ids, inputs_embeds=inputs_embeds, **kwargs)

    batch, length = input_ids.shape
    emb = self.embeddings
    packing = Packing(attention_mask)
    token_index = packing.token_index
    if position_ids is None:
        position_ids = torch.arange(length, device=input_ids.device)
    positions = position_ids.expand(batch, length).reshape(-1)[token_index]

    hidden = emb.word_embeddings(input_ids.reshape(-1)[token_index])
    if token_type_ids is None:
        hidden = hidden + emb.token_type_embeddings.weight[0].to(hidden.dtype)
    else:
        hidden = hidden + emb.token_type_embeddings(token_type_ids.reshape(-1)[token_index])
    hidden = hidden + emb.position_embeddings(positions)
    hidden = dropout(emb.LayerNorm(hidden), emb.dropout.p, self.training)

    *layers, last = self.encoder.layer
    for layer in layers:
        hidden = layer_forward(layer, hidden, packing, False, self.training)
    hidden = layer_forward(last, hidden, packing, first_token_only, self.training)

    if first_token_only:
        sequence_output = hidden.unsqueeze(1)  # [batch, 1, hidden]: the first token's final state
    else:
        sequence_output = hidden.new_zeros(batch * length, hidden.shape[-1]).index_copy(0, token_index, hidden)
        sequence_output = sequence_output.view(batch, length, -1)
    pooled = self.pooler(sequence_output) if self.pooler is not None else None
    return BaseModelOutputWithPoolingAndCrossAttentions(last_hidden_state=sequence_output, pooler_output=pooled)


def layer_forward(layer, hidden: torch.Tensor, packing: Packing, first_tokens_only: bool,
                  training: bool) -> torch.Tensor:
    """One BertLayer on packed [tokens, hidden] states. `first_tokens_only`: compute the output for each
    row's first token only (keys and values still come from every token)."""
    attention = layer.attention.self
    # row b's first token follows the real tokens of rows 0..b-1 in the packed order
    residual = hidden[packing.starts[:-1]] if first_tokens_only else hidden
    p = attention.dropout.p if training else 0.0
    context = packing.attend(attention, attention.query(residual), attention.key(hidden), attention.value(hidden),
                             first_tokens_only, p)
    out = layer.attention.output
    hidden = out.LayerNorm(dropout(out.dense(context), out.dropout.p, training) + residual)
    intermediate = layer.intermediate.intermediate_act_fn(layer.intermediate.dense(hidden))
    out = layer.output
    return out.LayerNorm(dropout(out.dense(intermediate), out.dropout.p, training) + hidden)
