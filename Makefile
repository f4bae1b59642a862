# FeXT — two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
# Install torch by exact version first so pip never resolves a (multi-GB) CUDA build here.
TORCH_SPEC ?= torch==$(TORCH_VERSION)

BIN := $(VENV)/bin

.PHONY: demo test test-fast test-isa test-min venv clean

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

# The numerics-sensitive tests again on the kernels of other CPUs: ATen's portable (non-SIMD) kernels and oneDNN
# held to SSE4.1, which picks other convolution kernels per batch size as AMD Zen does. A test that compares floats
# exactly where the kernels may differ fails here on any machine, not only on the CPU where it differs.
ISA_TESTS ?= tests/test_lean_units.py tests/test_model.py tests/test_metrics.py tests/test_memory.py \
	tests/test_scorecard.py tests/test_recipes.py tests/test_encoding.py tests/test_incremental.py tests/test_search.py
test-isa: venv
	ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 $(BIN)/python -m pytest -q -m "not slow" -p no:cacheprovider $(ISA_TESTS)

# The fast tests with every dependency at the lowest version pyproject.toml allows (torch stays
# TORCH_VERSION), in a separate venv: proves the declared lower bounds true.
# installed.txt (what pip installed) is the stamp: a re-run reinstalls only after pyproject.toml or the
# pin script changed, and the pins then move the installed packages to the new lower bounds.
MIN_VENV ?= .venv-min

$(MIN_VENV)/bin/python:
	$(PYTHON) -m venv $(MIN_VENV)
	$(MIN_VENV)/bin/pip install --upgrade --quiet pip

$(MIN_VENV)/installed.txt: $(MIN_VENV)/bin/python pyproject.toml .ci/lowest_constraints.py
	$(MIN_VENV)/bin/pip install --quiet "$(TORCH_SPEC)"
	$(MIN_VENV)/bin/python .ci/lowest_constraints.py --extra dev --torch $(TORCH_VERSION) > $(MIN_VENV)/constraints.txt
	$(MIN_VENV)/bin/pip install --quiet -c $(MIN_VENV)/constraints.txt -e ".[dev]"
	$(MIN_VENV)/bin/pip list --format=freeze > $@.tmp && mv $@.tmp $@

test-min: $(MIN_VENV)/installed.txt
	$(MIN_VENV)/bin/python -m pytest -q -m "not slow" -p no:cacheprovider

demo: venv
	$(BIN)/python -m fext.demo

clean:
	rm -rf $(VENV) $(MIN_VENV) build src/*.egg-info .pytest_cache
