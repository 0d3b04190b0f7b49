# The two commands: `make build` (default corpus) and `make test` (the whole CI suite).
# Each sets up .venv/ first if needed.
VENV := .venv
BIN := $(VENV)/bin
OUT ?= out/digits
BEAM_ARGS ?=

.PHONY: setup build build-video test lint typecheck pytest train-default train-video benchmark clean

setup:
	@scripts/setup.sh

build: setup
	$(BIN)/synthgen build recipes/digits.yaml --publish $(OUT) --resume -- $(BEAM_ARGS)

# The default video corpus: 8-frame clips of the digits moving (models/digits-motion).
build-video: setup
	$(BIN)/synthgen build recipes/moving-digits.yaml --publish out/moving-digits --resume -- $(BEAM_ARGS)

test: setup
	@scripts/setup.sh --test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest -q -n 2 --dist loadfile --durations=25

train-default: setup
	$(BIN)/synthgen train-default --output models

train-video: setup
	$(BIN)/synthgen train-default --video --output models

benchmark: setup
	$(BIN)/python benchmarks/default_models.py

clean:
	rm -rf out .pytest_cache .mypy_cache .ruff_cache
