"""Padding-free training on transformers' own extension points, for every architecture whose attention goes
through transformers' attention registry (`_supports_attention_backend`).

Dynamic padding still leaves pad tokens in length-grouped batches (~12% on SST-2, far more in prompt/completion
batches), and transformers runs every linear layer, norm, activation and dropout on them. `install(model)`:

- registers `varlen_attention` (and its mask function) as the attention implementation "adapt_varlen" in
  `transformers.AttentionInterface` / `masking_utils.AttentionMaskInterface` and switches the model to it
  (`config._attn_implementation` is never serialized: saved configs stay plain transformers configs);
- hooks the base model (`model.base_model`, the module peft's wrappers still call): a forward pre-hook turns a
  right-padded batch into transformers' packed format (`DataCollatorWithFlattening` semantics: input_ids
  [1, T] of real tokens, position_ids restarting per sequence, cu_seq_lens_q/k and max_length_q/k, no
  attention_mask; on CPU in bf16 the row is rounded up to a few lengths by filler sequences, see
  `packed_length`), and a forward hook gives every packed output back the padded [batch, length, ...] layout
  (zeros at pads): after the head for per-token heads (LM logits, token classification, QA spans, which then
  run on real tokens only), before it for pooling heads (the pooler is recomputed on it), so every task loss
  reads what the padded forward gives;
- on CPU, replaces the model's `nn.Dropout` modules' sampling by `cpu_kernels.dropout` (same rate within 8e-6,
  one 64-bit draw per four elements instead of a Bernoulli draw each; ~10% of a MiniLM step).

Batches this cannot compute exactly (left padding, a cache / generation, inputs_embeds, output_attentions, labels
given to a per-token head, whose loss transformers computes inside the forward) are left alone: the attention function then runs transformers' `sdpa_attention_forward` with the sdpa mask, so
evaluation and generation give what sdpa gives.
"""

from __future__ import annotations

import inspect
import types
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from adapt.speed import native
from adapt.speed.cpu_kernels import NativeAttention, dropout

ATTENTION = "adapt_varlen"

# model_type -> why its attention cannot run packed, for families whose classes claim the attention backend
# (none today); families without `_supports_attention_backend` (deberta-v2, ...) are refused by that flag
UNSUPPORTED_FAMILIES: dict[str, str] = {}


def varlen_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                     **kwargs) -> tuple[torch.Tensor, None]:
    """Attention in transformers' attention-function signature, registered as "adapt_varlen".

    Args:
        query: [batch, heads, q_len, head_dim]; key, value: [batch, kv_heads, kv_len, head_dim] (kv_heads divides
            heads: grouped-query attention).
        attention_mask: the mask `varlen_mask` built (None for packed input), used on the padded path only.
        scaling: the scores' factor (default head_dim ** -0.5); dropout: attention-probability dropout rate.
        kwargs: with `cu_seq_lens_q` / `cu_seq_lens_k` (int32 [n_seqs + 1], cumulative lengths of the packed
            sequences in the q_len / kv_len axis of batch row 0) and `max_length_q` / `max_length_k`: attention
            within each sequence only — causal iff `kwargs["is_causal"]` (default `module.is_causal`), within
            `sliding_window` tokens (|q - k| < sliding_window, flash-attention's window semantics) if given.
            Without them: transformers' `sdpa_attention_forward` (padded batches, masks as under sdpa).

    Returns:
        (attn_output [batch, q_len, heads, head_dim], None): no attention weights.

    Raises:
        ValueError: for a feature this function cannot compute (`softcap`, packed input with batch > 1).
    """
    if kwargs.get("softcap") is not None:
        raise ValueError("adapt_varlen attention does not implement logit softcapping")
    cu_q = kwargs.get("cu_seq_lens_q")
    if cu_q is None:
        passed = {k: v for k, v in kwargs.items() if k not in ("sliding_window", "position_ids")}  # in the mask
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **passed)
    if query.shape[0] != 1:
        raise ValueError(f"packed input has one row, got query of shape {tuple(query.shape)}")
    cu_k = kwargs.get("cu_seq_lens_k", cu_q)
    is_causal = kwargs.get("is_causal")
    is_causal = getattr(module, "is_causal", False) if is_causal is None else is_causal
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    window = kwargs.get("sliding_window")
    heads, kv_heads = query.shape[1], key.shape[1]
    if kv_heads != heads:
        key, value = repeat_kv(key, heads // kv_heads), repeat_kv(value, heads // kv_heads)
    # [1, heads, tokens, d] -> packed [tokens, heads, d]
    # squeeze, not x[0]: a select's backward zero-fills and copies a whole [heads, tokens, d] gradient
    q, k, v = (x.squeeze(0).transpose(0, 1) for x in (query, key, value))
    if (q.device.type == "cpu" and not is_causal and window is None and native.library() is not None
            and q.dtype == k.dtype == v.dtype and q.dtype in (torch.bfloat16, torch.float32)):
        tokens = q.shape[0]
        out = NativeAttention.apply(q.reshape(tokens, -1), k.reshape(k.shape[0], -1), v.reshape(v.shape[0], -1),
                                    cu_q.to(torch.int64), cu_k.to(torch.int64), heads, scaling, dropout)
        return out.view(1, tokens, heads, -1), None
    max_q = int(kwargs.get("max_length_q") or cu_q.diff().max())
    max_k = int(kwargs.get("max_length_k") or cu_k.diff().max())
    out = _gpu_varlen(q, k, v, cu_q, cu_k, max_q, max_k, scaling, dropout, is_causal, window)
    if out is None:
        out = _padded_sdpa(q, k, v, cu_q, cu_k, max_q, max_k, scaling, dropout, is_causal, window)
    return out.unsqueeze(0), None


def _gpu_varlen(q, k, v, cu_q, cu_k, max_q, max_k, scaling, p, is_causal, window):
    """[tokens, heads, d] by a GPU varlen kernel: PyTorch's `varlen_attn` (no dropout) or flash-attn's
    `flash_attn_varlen_func`; None when neither applies."""
    if q.device.type != "cuda" or q.dtype not in (torch.float16, torch.bfloat16):
        return None
    left = -1 if window is None else window - 1
    cu_q, cu_k = cu_q.to(torch.int32), cu_k.to(torch.int32)
    if p == 0.0:
        try:
            from torch.nn.attention.varlen import varlen_attn
        except ImportError:
            varlen_attn = None
        if varlen_attn is not None:
            return varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, scale=scaling,
                               window_size=(left, 0 if is_causal else left))
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:
        return None
    return flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p=p, softmax_scale=scaling,
                                  causal=is_causal, window_size=(left, 0 if is_causal else left))


def _padded_sdpa(q, k, v, cu_q, cu_k, max_q, max_k, scaling, p, is_causal, window):
    """[tokens, heads, d] exactly, on any device: the packed rows scattered into [n_seqs, heads, max_len, d],
    `F.scaled_dot_product_attention` with a mask of each sequence's real keys (and the causal / window
    pattern, aligned at each sequence's start), the real rows gathered back. On CPU with dropout the
    probabilities are computed here and dropped by `cpu_kernels.dropout`."""
    n = cu_q.numel() - 1
    device = q.device

    def rows(cu, width):  # index of each packed token in the flattened [n_seqs * width] layout, and the key mask
        lengths = cu.diff().to(torch.int64)
        real = torch.arange(width, device=device) < lengths[:, None]  # [n, width]
        return real.reshape(-1).nonzero().squeeze(1), real

    q_index, q_real = rows(cu_q, max_q)
    k_index, k_real = rows(cu_k, max_k)

    def scatter(x, index, width):
        padded = x.new_zeros(n * width, *x.shape[1:]).index_copy(0, index, x)
        return padded.view(n, width, *x.shape[1:]).transpose(1, 2)  # [n, heads, width, d]

    qs, ks, vs = scatter(q, q_index, max_q), scatter(k, k_index, max_k), scatter(v, k_index, max_k)
    mask = k_real[:, None, None, :]  # [n, 1, 1, max_k]
    if is_causal or window is not None:
        qi, ki = torch.arange(max_q, device=device)[:, None], torch.arange(max_k, device=device)[None, :]
        pattern = torch.ones(max_q, max_k, dtype=torch.bool, device=device)
        if is_causal:
            pattern &= ki <= qi
        if window is not None:
            pattern &= (qi - ki).abs() < window
        mask = mask & pattern
    mask = mask & q_real[:, None, :, None]  # pad query rows attend to nothing: zero output, never read
    if p and device.type == "cpu":
        scores = (qs @ ks.transpose(-1, -2)) * scaling
        probs = scores.masked_fill(~mask, float("-inf")).softmax(-1).nan_to_num(0.0)
        out = dropout(probs, p, True) @ vs
    else:
        # rows with no key at all (pad queries) would give NaN: let them see key 0, their output is dropped
        mask = mask | (~q_real[:, None, :, None] & (torch.arange(max_k, device=device) == 0))
        out = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, dropout_p=p, scale=scaling)
    return out.transpose(1, 2).reshape(n * max_q, *q.shape[1:]).index_select(0, q_index)


def varlen_mask(*args, attention_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor | None:
    """The mask function registered with `varlen_attention`: None when there is no 2-D attention_mask
    (packed input, whose sequences `cu_seq_lens` delimit, or a batch without padding), else transformers'
    `sdpa_mask` (padded evaluation, generation with a cache), so those batches run exactly as under sdpa."""
    if attention_mask is None:
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


AttentionInterface.register(ATTENTION, varlen_attention)
AttentionMaskInterface.register(ATTENTION, varlen_mask)


def unsupported(model: torch.nn.Module) -> str | None:
    """Why padding-free training cannot run on `model` (a transformers model), or None when it can."""
    if not isinstance(model, PreTrainedModel):
        return f"{type(model).__name__} is not a transformers PreTrainedModel"
    config = model.config
    model_type = getattr(config, "model_type", None)
    if model_type in UNSUPPORTED_FAMILIES:
        return UNSUPPORTED_FAMILIES[model_type]
    if getattr(config, "is_encoder_decoder", False):
        return f"{model_type}: encoder-decoder models are not flattened"
    base = model.base_model
    if not (type(model)._supports_attention_backend and type(base)._supports_attention_backend):
        return f"{model_type}: its attention does not go through transformers' attention registry"
    if getattr(config, "attn_logit_softcapping", None) is not None:
        return f"{model_type}: attention logit softcapping is not implemented by adapt_varlen"
    if "position_ids" not in inspect.signature(base.forward).parameters:
        return f"{model_type}: {type(base).__name__}.forward takes no position_ids"
    return None


def install(model: torch.nn.Module) -> bool:
    """Make `model` train padding-free: attention through "adapt_varlen", right-padded batches flattened into
    one packed row by a pre-hook on `model.base_model` and given back their padded layout by a forward hook,
    and on CPU the fast dropout. Returns False (nothing changed) when `unsupported(model)` names a reason;
    True when installed (or already installed). Changes no weight, class or saved file.

    Call before peft wraps the model: the hooks sit on the base model, which peft's wrappers call."""
    if unsupported(model) is not None:
        return False
    base = model.base_model
    if getattr(base, "_adapt_padding_free", None) is not None:
        return True
    model.set_attn_implementation(ATTENTION)
    if model.config._attn_implementation != ATTENTION or base.config._attn_implementation != ATTENTION:
        return False
    base._adapt_padding_free = PaddingFree(base, model if per_token_head(model) else base, first_token_layer(model))
    for module in model.modules():
        if type(module) is torch.nn.Dropout:
            module.forward = types.MethodType(_fast_dropout_forward, module)
    return True


MIXTURE_OF_EXPERTS = ("num_experts", "num_local_experts", "n_routed_experts")  # config keys naming an expert count
LOSS_ARGUMENTS = ("labels", "start_positions", "end_positions")  # what a head's own loss reads in the padded layout
PER_TOKEN_HEADS = ("ForCausalLM", "ForMaskedLM", "ForTokenClassification", "ForQuestionAnswering")


# families whose encoder layers are BERT's (`encoder.layer[i].attention.output(context, layer_input)`, then the
# feed-forward), and whose sequence-classification head reads the last layer at the first token only ([CLS] / <s>)
FIRST_TOKEN_FAMILIES = ("bert", "roberta", "xlm-roberta", "camembert", "electra")


def first_token_layer(model: torch.nn.Module) -> torch.nn.Module | None:
    """For a sequence classifier of `FIRST_TOKEN_FAMILIES`, its last layer's module after attention (BERT's
    `SelfOutput(context, layer_input)`), from which on the last layer only needs each sequence's first token:
    the output projection, the feed-forward and their gradients then run on one row per sequence instead of
    every token (about 1/7 of a 6-layer encoder's matmul work). None for other models."""
    if (getattr(model.config, "model_type", None) not in FIRST_TOKEN_FAMILIES
            or not type(model).__name__.endswith("ForSequenceClassification")):
        return None
    try:
        output = model.base_model.encoder.layer[-1].attention.output
    except (AttributeError, IndexError, TypeError):
        return None
    parameters = list(inspect.signature(output.forward).parameters)
    return output if parameters[:2] == ["hidden_states", "input_tensor"] else None


def per_token_head(model: torch.nn.Module) -> bool:
    """Whether `model`'s head maps each token's hidden state to that token's outputs alone (LM, token
    classification, extractive QA heads): the head then runs on the packed tokens and only its outputs are put
    back into the padded layout, so an LM head computes no logits for pads. Other heads (sequence
    classification pooling, multiple choice) read the padded hidden states."""
    return type(model).__name__.endswith(PER_TOKEN_HEADS)


def _fast_dropout_forward(self: torch.nn.Dropout, x: torch.Tensor) -> torch.Tensor:
    """nn.Dropout.forward with `cpu_kernels.dropout`'s sampling on CPU (F.dropout elsewhere)."""
    if self.inplace:
        return F.dropout(x, self.p, self.training, True)
    return dropout(x, self.p, self.training)


def packed_length(tokens: int) -> int:
    """The packed row's length for `tokens` real tokens when matmul shapes are bucketed: `tokens` rounded up
    to a multiple of 2^(bit_length(tokens) - 4), at least of 16: from 128 tokens on, under 1/8 more rows
    (1/16 on average).

    Why: oneDNN, which runs bf16/fp16 matmuls on CPU, JIT-compiles a kernel for each new matrix shape
    (~1 ms per linear layer and direction), and a packed batch's token count T is the row count of every
    matmul of the step, new almost every step: measured on the SST-2 bench's shapes ([~420, 384] x
    [384, 1536], AMX), new shapes ran at 266 GFLOP/s and bucketed ones at 621 (benchmarks/README.md).
    257 to 512 tokens fall into 8 lengths, so after a few steps every shape is cached."""
    step = 1 << max(4, tokens.bit_length() - 4)
    return -(-tokens // step) * step


def buckets_shapes(device: torch.device, weights_dtype: torch.dtype) -> bool:
    """Whether a forward on `device` with weights of `weights_dtype` runs its matmuls through oneDNN's
    per-shape kernels: bf16/fp16 compute on CPU (bf16/fp16 weights, or CPU autocast to bf16/fp16). fp32 on
    CPU (MKL) and GPUs have no per-shape compilation, so they get the real token count."""
    if device.type != "cpu":
        return False
    if torch.is_autocast_enabled("cpu"):
        return torch.get_autocast_dtype("cpu") in (torch.bfloat16, torch.float16)
    return weights_dtype in (torch.bfloat16, torch.float16)


@dataclass
class Packing:
    """Where a [batch, length] batch's real tokens sit in the packed row: `token_index` [T] (positions in the
    flattened batch), `cu_seq_lens` int32 [n_seqs + 1] (sequence boundaries in the packed row; filler
    sequences, if any, after the real ones), `filler` tokens appended after the T real ones (see
    `packed_length`): sequences of their own whose outputs are dropped, so they change no real token's output
    or gradient."""

    batch: int
    length: int
    token_index: torch.Tensor
    cu_seq_lens: torch.Tensor
    filler_lengths: tuple[int, ...] = ()
    first_token_only: bool = False  # the last layer computes each real sequence's first token only

    @property
    def sequences(self) -> int:
        """Real sequences (the filler's are not counted)."""
        return self.cu_seq_lens.numel() - 1 - len(self.filler_lengths)

    @property
    def first_tokens(self) -> torch.Tensor:
        """Positions of the real sequences' first tokens in the packed row, int64 [sequences]."""
        return self.cu_seq_lens[:self.sequences].long()

    @property
    def filler(self) -> int:
        return sum(self.filler_lengths)

    @property
    def packed(self) -> int:
        """The packed row's length: real tokens plus filler."""
        return self.token_index.numel() + self.filler

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """A packed [1, T + filler, ...] tensor (or, from a first-token-only last layer, [1, sequences, ...]) in the
        padded layout [batch, length, ...], zeros at pads (and at the tokens a first-token-only layer skipped)."""
        if x.shape[1] == self.packed:
            index, real = self.token_index, x.squeeze(0)[:self.token_index.numel()]
        else:
            index, real = self.token_index[self.first_tokens], x.squeeze(0)
        rows = x.new_zeros(self.batch * self.length, *x.shape[2:]).index_copy(0, index, real)
        return rows.view(self.batch, self.length, *x.shape[2:])


class PaddingFree:
    """The hooks on a base model (see module docstring); kept on it as `_adapt_padding_free`."""

    def __init__(self, base: PreTrainedModel, padded_outputs: torch.nn.Module,
                 first_token_layer: torch.nn.Module | None = None):
        """Flatten the inputs of `base`; give the outputs of `padded_outputs` (`base`, or the model around it
        when its head works per token) back their padded layout; from `first_token_layer` (see
        `first_token_layer()`) on, keep each sequence's first token only, unless hidden states are asked for."""
        self.base = base
        self.packings: list[Packing | None] = []  # one per running forward (nested calls stack)
        config = base.config
        self.token_types = getattr(config, "type_vocab_size", 0) > 0
        embeddings = getattr(base, "embeddings", None)
        # RoBERTa-style embeddings count positions from padding_idx + 1 and derive them from input_ids
        self.positions_from_ids = getattr(embeddings, "create_position_ids_from_input_ids", None)
        self.padding_idx = getattr(embeddings, "padding_idx", None)
        parameters = inspect.signature(base.forward).parameters
        self.takes_token_types, self.takes_use_cache = "token_type_ids" in parameters, "use_cache" in parameters
        base.register_forward_pre_hook(self.flatten, with_kwargs=True)
        padded_outputs.register_forward_hook(self.unflatten, with_kwargs=True, always_call=True)
        self.leave_next = False  # the model around the base computes a loss from padded labels: do not flatten
        # filler tokens would enter a mixture-of-experts router's batch statistics (its load-balancing loss)
        self.buckets = not any(getattr(config, k, None) for k in MIXTURE_OF_EXPERTS)
        if padded_outputs is not base:
            padded_outputs.register_forward_pre_hook(self.note_labels, with_kwargs=True)
        self.keeps_first_tokens = first_token_layer is not None
        if first_token_layer is not None:
            first_token_layer.register_forward_pre_hook(self.keep_first_tokens)

    def note_labels(self, module, args: tuple, kwargs: dict) -> None:
        """Forward pre-hook of a per-token-head model: a call with `labels` (or QA start/end positions) has its
        loss computed by transformers inside the forward, against the padded layout: that call stays padded."""
        self.leave_next = any(kwargs.get(k) is not None for k in LOSS_ARGUMENTS)

    def packing(self, args: tuple, kwargs: dict) -> Packing | None:
        """The Packing of this call's batch, or None to leave it alone."""
        if self.leave_next:
            self.leave_next = False
            return None
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if (len(args) > 1 or not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2
                or kwargs.get("inputs_embeds") is not None or kwargs.get("output_attentions")
                or kwargs.get("past_key_values") is not None or kwargs.get("cache") is not None
                or kwargs.get("cu_seq_lens_q") is not None or kwargs.get("encoder_hidden_states") is not None):
            return None
        mask = kwargs.get("attention_mask")
        if mask is not None and (mask.dim() != 2 or mask.shape != input_ids.shape):
            return None
        batch, length = input_ids.shape
        device = input_ids.device
        if mask is None:
            real = torch.ones(batch, length, dtype=torch.bool, device=device)
        else:
            real = mask.bool()
            lengths = real.sum(1)
            if not torch.equal(real, torch.arange(length, device=device) < lengths[:, None]):
                return None  # left (or inner) padding
        starts = torch.zeros_like(real)
        starts[:, 0] = True
        position_ids = kwargs.get("position_ids")
        if position_ids is not None:  # already packed rows: a sequence starts wherever positions do not step by 1
            position_ids = position_ids.expand(batch, length)
            starts[:, 1:] |= position_ids[:, 1:] != position_ids[:, :-1] + 1
        elif mask is None:
            return None  # neither padding nor several documents: nothing to gain
        token_index = real.reshape(-1).nonzero().squeeze(1)
        boundaries = starts.reshape(-1)[token_index].nonzero().squeeze(1)
        tokens = token_index.numel()
        filler: tuple[int, ...] = ()
        if tokens and self.buckets and buckets_shapes(device, self.base.dtype):
            # filler cut into sequences no longer than the longest real one, so no attention gets wider
            longest = int(torch.cat([boundaries, boundaries.new_tensor([tokens])]).diff().max())
            extra = packed_length(tokens) - tokens
            filler = (longest,) * (extra // longest) + ((extra % longest,) if extra % longest else ())
        ends = torch.tensor([0, *filler], dtype=boundaries.dtype, device=device).cumsum(0) + tokens
        cu = torch.cat([boundaries, ends]).to(torch.int32)
        hidden_states = kwargs.get("output_hidden_states")
        hidden_states = self.base.config.output_hidden_states if hidden_states is None else hidden_states
        return Packing(batch, length, token_index, cu, filler, self.keeps_first_tokens and not hidden_states)

    def keep_first_tokens(self, module, args: tuple):
        """Forward pre-hook of the last layer's post-attention module (`first_token_layer`): its inputs (the
        attention context and the layer's input, [1, T + filler, hidden] each) at each real sequence's first
        token only, [1, sequences, hidden]; unchanged when the running forward is not packed that way."""
        packing = self.packings[-1] if self.packings else None
        if packing is None or not packing.first_token_only or len(args) < 2:
            return None
        rows = packing.first_tokens
        return (*(x.index_select(1, rows) for x in args[:2]), *args[2:])

    def flatten(self, module, args: tuple, kwargs: dict):
        """Forward pre-hook: the batch's keyword arguments in the packed format (input_ids, position_ids and
        token_type_ids [1, T + filler] (filler: see `packed_length`, 0 unless matmul shapes are bucketed),
        cu_seq_lens_q/k int32 [n_seqs + 1], max_length_q/k, no attention_mask, use_cache=False), or None
        (unchanged) when `packing` declines the batch. Positions are those the padded forward would use:
        RoBERTa-style embeddings' `create_position_ids_from_input_ids` (padding_idx + 1 onwards), else 0, 1, ...
        per sequence, else the caller's position_ids."""
        packing = self.packing(args, kwargs)
        self.packings.append(packing)
        if packing is None:
            return None
        input_ids = kwargs.pop("input_ids", None)
        input_ids = args[0] if input_ids is None else input_ids
        mask = kwargs.pop("attention_mask", None)
        index = packing.token_index

        def pack(x: torch.Tensor, filler: torch.Tensor | None) -> torch.Tensor:
            """[batch, length] -> [1, T + filler]: the real tokens, then the filler's values (if any)."""
            packed = x.expand(packing.batch, packing.length).reshape(-1)[index]
            return (packed if filler is None else torch.cat([packed, filler.to(packed.dtype)])).unsqueeze(0)

        position_ids = kwargs.get("position_ids")
        first_position = 0
        if position_ids is None:
            if self.positions_from_ids is not None and self.padding_idx is not None:
                position_ids = self.positions_from_ids(input_ids, self.padding_idx)
                first_position = self.padding_idx + 1
            else:
                position_ids = (mask.long().cumsum(1) - 1).clamp(min=0)
        # filler sequences: positions from each one's start, the token id of the batch's first token, type 0
        filler_positions = filler_ids = filler_types = None
        if packing.filler:
            filler_positions = torch.cat([torch.arange(n, device=index.device) for n in packing.filler_lengths])
            filler_positions += first_position
            filler_ids = input_ids.reshape(-1)[index[:1]].expand(packing.filler)
            filler_types = index.new_zeros(packing.filler)
        kwargs["position_ids"] = pack(position_ids, filler_positions)
        token_type_ids = kwargs.get("token_type_ids")
        if token_type_ids is not None:
            kwargs["token_type_ids"] = pack(token_type_ids, filler_types)
        elif self.token_types and self.takes_token_types:
            kwargs["token_type_ids"] = torch.zeros(1, packing.packed, dtype=torch.long, device=index.device)
        kwargs["input_ids"] = pack(input_ids, filler_ids)
        max_length = int(packing.cu_seq_lens.diff().max())
        kwargs.update(cu_seq_lens_q=packing.cu_seq_lens, cu_seq_lens_k=packing.cu_seq_lens,
                      max_length_q=max_length, max_length_k=max_length)
        if self.takes_use_cache:
            kwargs["use_cache"] = False
        return (), kwargs

    def unflatten(self, module, args: tuple, kwargs: dict, output):
        """Forward hook: every packed [1, T, ...] output (last_hidden_state, hidden_states, logits, start/end
        logits) in the padded [batch, length, ...] layout, and a base model's pooler (if any) recomputed on the
        padded last_hidden_state."""
        packing = self.packings.pop() if self.packings else None
        if packing is None or output is None:
            return None
        lengths = {packing.packed, packing.sequences} if packing.first_token_only else {packing.packed}

        def pad(x):
            if isinstance(x, torch.Tensor) and x.dim() >= 2 and x.shape[0] == 1 and x.shape[1] in lengths:
                return packing.pad(x)
            if isinstance(x, tuple):
                return tuple(pad(y) for y in x)
            return x

        if not hasattr(output, "keys"):  # return_dict=False
            return pad(output)
        for key in list(output.keys()):
            output[key] = pad(output[key])
        pooler = getattr(module, "pooler", None)
        if pooler is not None and output.get("pooler_output") is not None:
            output["pooler_output"] = pooler(output["last_hidden_state"])
        return output
