# cvm-geoloc: `make demo` serves the embedded default, `make test` runs every check CI runs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install lint typecheck test test-fast test-slow demo bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch and torchvision first, pinned, so that pip takes the releases on this machine's disk
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev,ray]'
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

test-fast: install
	$(BIN)/pytest -q

# Slow tests (long training/indexing runs, the shipped weights' recall floor) run as a second
# stage; pytest exits 5 when a stage selects no test, which is not a failure here.
test-slow: install
	$(BIN)/pytest -q -m slow || [ $$? -eq 5 ]

test: lint typecheck test-fast test-slow

demo: install
	$(BIN)/python scripts/demo.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
