# The two set-up commands of the README. Both create .venv and install what they need.
PYTHON ?= python3
VENV ?= .venv
# Pinned here (not in pyproject) so a CPU machine takes the local CPU build of torch.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: train test lint

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

# The main job: a tiny 1.58-bit model on Shakespeare (CPU if there is no GPU); prints
# validation perplexity. A second `make train` continues the same run.
train: $(BIN)/.installed
	$(BIN)/bittern train --config configs/shakespeare-tiny.toml --out runs/shakespeare-tiny --resume

# The test suite, as CI runs it (pytest's "no tests collected", exit 5, is not a failure).
test: $(BIN)/.installed
	TRITON_INTERPRET=1 $(BIN)/python -m pytest tests; rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

lint: $(BIN)/.installed
	$(BIN)/ruff check bittern tests benchmarks && $(BIN)/ruff format --check bittern tests benchmarks
