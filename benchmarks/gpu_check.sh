#!/usr/bin/env bash
# Issue 16, acceptance 5, on a lent GPU machine, in one command (about 7 minutes at most):
#     bash benchmarks/gpu_check.sh          (carry .gpu: wheels, MiniLM config + tokenizer, SST-2)
# Stages, each with its own time limit so that a stuck stage still leaves the others' results:
#   1. install   the packages adapt needs that the machine's image lacks, from .gpu/wheels (no network there)
#   2. tests     the padding-free parity tests (tests/test_padding_free*.py; they run on CPU there, under the
#                machine's transformers / torch versions)
#   3. probe     benchmarks/bench_gpu.py --probe: which attention path adapt's padding-free takes on CUDA, its
#                logits / gradients against transformers' sdpa forward, a training step's time of each
#   4. bench     benchmarks/bench_gpu.py: adapt vs Trainer (sdpa; flash_attention_2 where it imports), batch
#                32 and 128, alternating rounds: samples/s, MFU, wall time
#   5. sharded   benchmarks/sharded_check.py: adapt with examples/accelerate/fsdp.yaml and deepspeed_zero2.yaml
#                on every GPU, a fixed number of steps: samples/s, peak GPU memory, accuracy (sharded.json)
# Everything goes to $OUT (the device tool's folder; /tmp/gpu_check_out elsewhere): gpu_check.log,
# tests.log, probe.json, gpu_bench.json.
# GPU_CHECK_DRY=1: check this script end to end on a machine without a GPU (the project's .venv, the wheel
# set resolved for Python 3.12 without installing it, tests cut to a few, tiny bench sizes on CPU).
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
LOG=$OUT/gpu_check.log
DRY=${GPU_CHECK_DRY:-0}
BUDGET=${GPU_CHECK_BUDGET_S:-420}  # seconds for all stages together (a shared CPU needs more for the dry run)
[ "$DRY" = 1 ] && BUDGET=${GPU_CHECK_BUDGET_S:-1200}
START=$(date +%s)
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
       TOKENIZERS_PARALLELISM=false TRANSFORMERS_VERBOSITY=error
if [ "$DRY" = 1 ]; then PY=${PYTHON:-.venv/bin/python}; else PY=${PYTHON:-python3}; fi
# packages of adapt's dependencies that the GPU image lacks (KINDS.md) and that a sentiment finetune imports
NEEDED="datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5"

elapsed() { echo $(( $(date +%s) - START )); }
stage() { echo "=== [$(elapsed) s] $*" | tee -a "$LOG"; }
left() { echo $(( BUDGET - $(elapsed) )); }

stage "gpu_check: dry=$DRY python=$PY budget=${BUDGET}s"
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv 2>&1 || true; } | tee -a "$LOG"

stage "1. install from .gpu/wheels"
if [ "$DRY" = 1 ]; then
  # resolve the wheel set as the GPU machine's pip would (cp312, manylinux, offline); installs nothing
  $PY -m pip install --dry-run --quiet --ignore-installed --no-index --find-links .gpu/wheels --target /tmp/gpu_check_dry \
      --python-version 3.12 --implementation cp --platform manylinux2014_x86_64 --only-binary=:all: --no-deps $NEEDED 2>&1 | tee -a "$LOG"
else
  installed() { $PY -c "import datasets, pydantic" 2>/dev/null; }
  # with dependency resolution against what is installed (changes only what must change, e.g. fsspec) ...
  timeout 120 $PY -m pip install --quiet --no-index --find-links .gpu/wheels $NEEDED 2>&1 | tee -a "$LOG"
  # ... else the missing packages alone into the environment, else into a folder on PYTHONPATH
  installed || { stage "   resolution failed: installing the missing packages alone (--no-deps)"
                 timeout 120 $PY -m pip install --quiet --no-index --no-deps --find-links .gpu/wheels $NEEDED 2>&1 | tee -a "$LOG"; }
  installed || { stage "   still missing: --target /tmp/gpu_check_site"
                 timeout 120 $PY -m pip install --quiet --no-index --no-deps --find-links .gpu/wheels \
                     --target /tmp/gpu_check_site $NEEDED 2>&1 | tee -a "$LOG"
                 export PYTHONPATH=$PYTHONPATH:/tmp/gpu_check_site; }
fi
$PY - <<'EOF' 2>&1 | tee -a "$LOG"
import importlib.metadata as md
for name in ("torch", "transformers", "accelerate", "datasets", "pydantic", "fsspec", "pyarrow", "huggingface-hub",
             "typing-extensions", "peft", "pytest", "flash-attn"):
    try:
        print(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"{name} MISSING")
import adapt.cli, adapt.train, adapt.speed  # noqa: E401  the finetune path imports
print("adapt imports: ok")
EOF

stage "2. padding-free parity tests (limit 90 s)"
TESTS=$(ls tests/test_padding_free.py tests/test_padding_free_matrix.py 2>/dev/null)
if [ -z "$TESTS" ]; then
  echo "no padding-free test files" | tee -a "$LOG"
elif ! $PY -c "import pytest" 2>/dev/null; then
  echo "pytest missing: tests skipped" | tee -a "$LOG"
else
  FILTER=${GPU_CHECK_TESTS:-}  # a pytest -k expression; dry default: a few tests only
  if [ "$DRY" = 1 ] && [ -z "$FILTER" ]; then FILTER="same_outputs_and_gradients and BertForSequenceClassification"; fi
  timeout 90 $PY -m pytest $TESTS -q -p no:cacheprovider ${FILTER:+-k "$FILTER"} >"$OUT/tests.log" 2>&1
  echo "pytest exit code $? (124: stopped at 90 s); end of tests.log:" | tee -a "$LOG"
  tail -n 25 "$OUT/tests.log" | tee -a "$LOG"
fi

if [ "$DRY" = 1 ]; then DRY_FLAG=--dry; else DRY_FLAG=; fi
PROBE_LIMIT=90; [ "$DRY" = 1 ] && PROBE_LIMIT=400
stage "3. padding-free probe (limit $PROBE_LIMIT s)"
timeout --kill-after=5 $PROBE_LIMIT $PY benchmarks/bench_gpu.py --probe $DRY_FLAG --out "$OUT/probe.json" 2>&1 | tee -a "$LOG"
echo "probe exit code ${PIPESTATUS[0]}" | tee -a "$LOG"

SHARDED_S=${GPU_CHECK_SHARDED_S:-150}  # kept back for stage 5
BENCH_LIMIT=$(( $(left) - 10 - SHARDED_S ))
stage "4. bench (limit ${BENCH_LIMIT} s)"
# the bench starts no run that would end past its budget; the timeout is the backstop
timeout --kill-after=5 "$BENCH_LIMIT" $PY benchmarks/bench_gpu.py $DRY_FLAG --out "$OUT/gpu_bench.json" \
    --budget-s $(( BENCH_LIMIT - 15 )) ${GPU_CHECK_BENCH_ARGS:-} 2>&1 | tee -a "$LOG"
stage "bench exit code ${PIPESTATUS[0]} (124: stopped at its limit; gpu_bench.json holds the runs finished)"

stage "5. sharded runs: FSDP2 and DeepSpeed ZeRO-2 on every GPU (limit ${SHARDED_S} s)"
# the shipped examples/accelerate configs; samples/s, peak memory, accuracy (or the error) of each in sharded.json
timeout --kill-after=5 "$SHARDED_S" $PY benchmarks/sharded_check.py $DRY_FLAG --out "$OUT/sharded.json" \
    --limit-s $(( SHARDED_S / 2 - 5 )) 2>&1 | tee -a "$LOG"
stage "sharded exit code ${PIPESTATUS[0]}"
stage "done"
