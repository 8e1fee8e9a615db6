# The two commands a new operator needs:  make run   and   make test
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test lint install system-packages bench lock

# Exactly the packages the tests ran with, checked against their hashes (requirements.lock);
# mailveil itself on top, without letting pip pick other versions.
$(BIN)/mailveil: pyproject.toml requirements.lock
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q --require-hashes -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	$(BIN)/pip check
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

# After changing the dependencies in pyproject.toml: the newest versions its ranges allow,
# with hashes from PyPI. Review the diff, then run make test.
lock:
	python3 -m venv $(VENV)-lock
	$(VENV)-lock/bin/pip install -q uv
	$(VENV)-lock/bin/uv pip compile pyproject.toml --extra test --generate-hashes \
	    --python-version 3.11 --no-annotate --custom-compile-command "make lock" \
	    -o requirements.lock
