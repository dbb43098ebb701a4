# cifarlab: `make demo` installs the plain package, trains for real and prints the run directory;
# `make test` installs what the tests need (the `test` extra) and runs the whole test suite, `make test-fast`
# all but the tests marked slow (over ~2 s each, or a module fixture that trains a reported run).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: demo test test-fast bench bench-gpu venv data clean

TEST_STAMP := $(VENV)/.installed-test

venv: $(STAMP)

# constraints.txt pins torch==2.13.0 for the install (the CPU build here); the package itself asks torch>=2.4.
# The plain package is all `cifarlab demo` needs; `make test` adds the `test` extra (pyproject.toml).
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e .
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $(TEST_STAMP)

# Real Fashion-MNIST from the OS package, for offline demos and tests.
data:
	@if [ -d $(FMNIST) ]; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		echo "installing dataset-fashion-mnist (real Fashion-MNIST for offline runs)"; \
		(apt-get install -y -qq dataset-fashion-mnist || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)) >/dev/null; \
	else echo "note: Fashion-MNIST not found in $(FMNIST); install it with 'sudo apt-get install dataset-fashion-mnist' (or let cifarlab download it)"; fi

demo: venv data
	$(VENV)/bin/cifarlab demo

# One pytest worker per CPU core (pytest-xdist), each test file on one worker (its module fixtures built
# once); every test runs torch on one thread (tests/conftest.py), so the workers don't oversubscribe.
PYTEST := $(PY) -m pytest -q -n auto --dist loadfile

test: $(TEST_STAMP) data
	$(VENV)/bin/ruff check src tests bench
	$(PYTEST)

test-fast: $(TEST_STAMP) data
	$(VENV)/bin/ruff check src tests bench
	$(PYTEST) -m "not slow"

bench: venv data
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,bench]'
	$(PY) bench/run_all.py

# issue 10: fit vs a bare loop, launches and syncs per step, on the CUDA device if there is one (else small
# CPU models); `make bench-gpu ARGS=--smoke` for a few steps.
bench-gpu: venv
	$(PY) bench/gpu_speed.py $(ARGS)

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
