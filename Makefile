# FeXT — two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
# Install torch by exact version first so pip never resolves a (multi-GB) CUDA build here.
TORCH_SPEC ?= torch==$(TORCH_VERSION)

BIN := $(VENV)/bin

.PHONY: demo test test-fast venv clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

test: venv
	$(BIN)/python -m pytest -q

# The same suite without the tests marked slow (torchrun, pseudo-terminal, SIGKILL, demo).
test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow"

demo: venv
	$(BIN)/python -m fext.demo

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
