# A newcomer needs two commands: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup run chat test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: setup
	$(BIN)/storefront run

chat: setup
	$(BIN)/storefront chat

lint: setup
	$(BIN)/ruff check bot handlers engine storage scheduler.py tests benchmarks
	$(BIN)/mypy

test: setup lint
	./tests/services.sh
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: setup
	./tests/services.sh
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) var .pytest_cache
