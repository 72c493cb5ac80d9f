"""The CPU paths of padding-free attention (`padding_free.varlen_attention`, transformers' registry name
"adapt_varlen"), side by side in one process: the native kernel on packed rows (`adapt.speed.native`,
native/attention.c) against the generic exact path (packed rows scattered into [sequences, heads, length,
head] and attended by oneDNN matmuls, softmax and `cpu_kernels.dropout` in training; SDPA without dropout).
MiniLM's geometry (12 heads of 32), about 4,096 tokens per call, sequence lengths between 3/4 and all of L;
times are the median of --repeats calls after warm-up.

    .venv/bin/python benchmarks/bench_attention.py [--lengths 16 64 128 384 512] [--dtype bf16|fp32]"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from adapt.speed import native, padding_free

HEADS, HEAD_SIZE = 12, 32


ENCODER_ATTENTION = torch.nn.Module()  # what varlen_attention reads from a BertSelfAttention
ENCODER_ATTENTION.is_causal = False


def use_native(enabled: bool) -> None:
    os.environ[native.SWITCH_VARIABLE] = "1" if enabled else "0"
    native.library.cache_clear()


def milliseconds(length: int, dtype: torch.dtype, dropout: float, backward: bool, repeats: int) -> float:
    generator = torch.Generator().manual_seed(length)
    batch = max(1, 4096 // length)
    lengths = torch.randint(length * 3 // 4, length + 1, (batch,), generator=generator)
    lengths[0] = length
    cu = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)]).to(torch.int32)
    # [1, tokens, heads, head] leaves, seen as [1, heads, tokens, head] as the models' projections give them
    tokens = int(lengths.sum())
    q, k, v = (torch.randn(1, tokens, HEADS, HEAD_SIZE, generator=generator).to(dtype).requires_grad_(backward)
               for _ in range(3))

    def call() -> None:
        with torch.set_grad_enabled(backward):
            heads_first = (x.transpose(1, 2) for x in (q, k, v))
            context, _ = padding_free.varlen_attention(ENCODER_ATTENTION, *heads_first, None, scaling=HEAD_SIZE ** -0.5,
                                                       dropout=dropout, cu_seq_lens_q=cu, cu_seq_lens_k=cu)
            if backward:
                context.backward(torch.ones_like(context))

    for _ in range(3):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[16, 32, 64, 128, 256, 384, 512])
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    use_native(True)
    if native.library() is None:
        raise SystemExit("the native kernels are not built: run `make install`")
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    cases = [("training (dropout 0.1), forward + backward", 0.1, True), ("inference, forward", 0.0, False)]
    print(f"{args.dtype}, {HEADS} heads of {HEAD_SIZE}, {torch.get_num_threads()} threads; ms per call (median)")
    for title, dropout, backward in cases:
        print(f"\n{title}\n{'L':>5} {'generic':>9} {'native':>9} {'native/generic':>14}")
        for length in args.lengths:
            timed = {}
            for enabled in (False, True):
                use_native(enabled)
                timed[enabled] = milliseconds(length, dtype, dropout, backward, args.repeats)
            print(f"{length:>5} {timed[False]:>9.2f} {timed[True]:>9.2f} {timed[True] / timed[False]:>14.2f}")
    use_native(True)


if __name__ == "__main__":
    main()
