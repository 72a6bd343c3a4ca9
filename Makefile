# Two commands for a new user: `make demo` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow install lint bench docs clean fixtures

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
# `make test` leaves out the slow end-to-end subprocess tests; `make test-slow` runs them
# (CI runs both).
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 -m "not slow"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 -m slow

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
	rm -rf $(VENV) out .pytest_cache
