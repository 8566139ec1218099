# A newcomer needs two commands: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LOCK   := requirements.lock
UVLOCK := requirements-uv.lock
# the lock's platforms: any OS, CPython 3.11+ (pyproject's requires-python)
COMPILE := --generate-hashes --universal --python-version 3.11 --quiet

.PHONY: setup lock run chat test lint bench clean

setup: $(STAMP)

# Installs exactly what the lock pins, each file checked against its hash: uv (itself pinned
# and hash-checked by pip) syncs the venv to the lock, then the project goes in without deps.
# A changed lock (or pyproject.toml) re-runs this on the next `make`.
$(STAMP): $(LOCK) $(UVLOCK) pyproject.toml
	$(MAKE) --no-print-directory $(BIN)/uv
	$(BIN)/uv pip sync --quiet --python $(BIN)/python --require-hashes $(LOCK)
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps --no-build-isolation -e .
	touch $(STAMP)

# After changing dependencies in pyproject.toml (or to take newer releases): `make lock`,
# then `make setup`, run the tests, and commit both lock files. `make lock UPGRADE=1`
# moves every pin to the newest allowed release; without it pins move only where needed.
lock: $(BIN)/uv
	$(BIN)/uv pip compile $(COMPILE) $(if $(UPGRADE),--upgrade) --extra dev \
	    pyproject.toml requirements-tools.in -o $(LOCK)
	sed -n 's/^\(uv==[^ ]*\).*/\1/p' $(LOCK) | $(BIN)/uv pip compile $(COMPILE) - -o $(UVLOCK)

# uv itself, pinned and hash-checked by pip
$(BIN)/uv: $(UVLOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r $(UVLOCK)
	touch $(BIN)/uv

run: setup
	$(BIN)/storefront run

chat: setup
	$(BIN)/storefront chat

# lint-imports: the layers as drawn (pyproject.toml [tool.importlinter], docs/engine.md "Layers")
lint: setup
	$(BIN)/ruff check bot handlers engine storage scheduler tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

test: setup lint
	./tests/services.sh
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=20

bench: setup
	./tests/services.sh
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) var .pytest_cache
