# vidshard: every target creates the virtual environment itself when it is missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-all test-gpu lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned: 2.13.0 is the CPU wheel on local disk; any other
	# request pulls a multi-GB CUDA build. pyproject asks for a range it satisfies.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/vidshard demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -m ''

# The GPU suite (tests/gpu, see docs/gpu.md); `make test` never collects it. Without a CUDA device
# it fails with "no CUDA device", so it can never pass by running nothing.
test-gpu: $(STAMP)
	@$(BIN)/python -c "import sys, torch; torch.cuda.is_available() or sys.exit('no CUDA device: \
	make test-gpu checks the CUDA, bf16, flash-attn and NCCL paths and needs a GPU (see docs/gpu.md)')"
	VIDSHARD_GPU_TESTS=1 $(BIN)/python -m pytest -q -m '' tests/gpu

bench: $(STAMP)
	$(BIN)/vidshard bench preprocess
	$(BIN)/vidshard bench loader
	$(BIN)/vidshard bench model

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) demo-out .pytest_cache
