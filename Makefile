# The two commands a new operator needs:  make run   and   make test
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test lint install system-packages bench

$(BIN)/mailveil: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(BIN)/mailveil

system-packages:
	./scripts/install-system-packages

run: install
	$(BIN)/mailveil serve

lint: install
	$(BIN)/ruff check mailveil tests bench
	$(BIN)/mypy

test: install system-packages lint
	$(BIN)/pytest

bench: install system-packages
	$(BIN)/pip install -q -e '.[test,bench]'
	$(BIN)/python -m bench.relay
