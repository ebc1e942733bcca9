# Entry points: demo, run, test, lint, bench. Everything a fresh machine needs is installed here.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo run test lint fmt bench clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/hq-gateway demo

run: $(STAMP)
	$(BIN)/hq-gateway serve --config config/gateway.toml

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check gateway tests benchmarks
	$(BIN)/ruff format --check gateway tests benchmarks
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff format gateway tests benchmarks
	$(BIN)/ruff check --fix gateway tests benchmarks

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) build *.egg-info
