"""Run adapt's CLI or the Trainer peer in this process, then record its peak GPU memory: the benchmark starts
both systems through this one launcher so that each is measured the same way.

    python benchmarks/launch.py --report FILE adapt finetune --recipe sentiment ...
    python benchmarks/launch.py --report FILE peer --data DIR --config bf16 ...
    python benchmarks/launch.py --report FILE sft-peer --train FILE --validation FILE ..."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

PEERS = {"peer": Path(__file__).resolve().parent / "trainer_peer.py",  # SST-2 (bench_sst2.py)
         "sft-peer": Path(__file__).resolve().parent / "sft_peer.py"}  # prompt/completion SFT (bench_sft.py)


def cuda_peak_mb() -> float | None:
    torch = sys.modules.get("torch")  # never import torch just to ask
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return torch.cuda.max_memory_allocated() / 2**20


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[0] != "--report" or argv[2] not in ("adapt", *PEERS):
        raise SystemExit(__doc__)
    report, target, args = Path(argv[1]), argv[2], argv[3:]
    try:
        if target == "adapt":
            from adapt.cli import main as adapt_cli

            sys.argv = ["adapt", *args]
            adapt_cli()
        else:
            sys.argv = [str(PEERS[target]), *args]
            runpy.run_path(str(PEERS[target]), run_name="__main__")
    finally:
        report.write_text(json.dumps({"cuda_peak_mb": cuda_peak_mb()}))


if __name__ == "__main__":
    main(sys.argv[1:])
