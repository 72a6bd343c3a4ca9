# Two commands for a new user: `make demo` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow test-lowest install lint bench docs clean fixtures

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: 2.13.0 is the CPU wheel; a looser request pulls a multi-GB CUDA build
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/ioi_patching.py

# two workers (pytest-xdist), one torch thread each: the suite is CPU-bound on 2 cores.
# Bytecode is cached even where the environment sets PYTHONDONTWRITEBYTECODE: without
# __pycache__ every worker and every CLI subprocess recompiles the package and re-rewrites
# the test modules' asserts (collection 15 s instead of 6 s).
PYTEST := env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -m pytest
# `make test` leaves out the slow end-to-end subprocess tests; `make test-slow` runs them
# (CI runs both).
test: $(STAMP)
	$(PYTEST) -q -n 2 -m "not slow"

test-slow: $(STAMP)
	$(PYTEST) -q -n 2 -m slow

# The fast core of the suite at the lowest versions pyproject.toml declares (transformers,
# nnsight, tokenizers; torch==2.13.0 first), in its own venv: tools/lowest_pins.py reads the
# floors and pip installs under those pins as constraints, so nothing floats up (CI runs it).
LOWEST := .venv-lowest
LOWEST_STAMP := $(LOWEST)/.installed
LOWEST_TESTS := tests/model tests/engine tests/patching tests/circuits tests/tasks
$(LOWEST_STAMP): pyproject.toml tools/lowest_pins.py
	$(PYTHON) -m venv $(LOWEST)
	$(LOWEST)/bin/python -m pip install -q --upgrade pip
	$(LOWEST)/bin/python -m pip install -q torch==2.13.0
	$(LOWEST)/bin/python tools/lowest_pins.py > $(LOWEST)/constraints.txt
	$(LOWEST)/bin/python -m pip install -q -c $(LOWEST)/constraints.txt -e '.[dev]'
	touch $(LOWEST_STAMP)

test-lowest: $(LOWEST_STAMP)
	$(LOWEST)/bin/python -m pip list 2>/dev/null | grep -iE '^(torch|transformers|nnsight|tokenizers) '
	$(LOWEST)/bin/python -m pytest -q -n 2 -m "not slow" $(LOWEST_TESTS)

lint: $(STAMP)
	$(BIN)/ruff check featcircuits tests examples benchmarks

DOCS_STAMP := $(VENV)/.installed-docs
$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,docs]'
	touch $(DOCS_STAMP)

# the viewer screenshots in docs/img are taken in headless chromium first (skipped, with a
# message, where chromium is missing: the committed images stay)
docs: $(DOCS_STAMP)
	$(BIN)/python examples/viewer_screenshots.py --out docs/img
	$(BIN)/mkdocs build --strict

# Rebuild tests/fixtures/peers/ from the peers' own code (one venv per peer under $(PEERS),
# created when missing: torch==2.13.0 first; dictionary-learning with --no-deps).
PEERS ?= .peers
fixtures: $(STAMP)
	$(BIN)/python tools/peer_fixtures.py --venvs $(PEERS)

bench: $(STAMP)
	$(BIN)/python benchmarks/patching.py

clean:
	rm -rf $(VENV) $(LOWEST) out .pytest_cache
