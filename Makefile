# Two entry points: `make run` (a search on the built-in default) and `make test`.
# Both create .venv and install n2n into it first.
PY ?= python3
VENV ?= .venv
# Where pip finds no CPU wheel of torch 2.13.0, pass TORCH_INDEX=https://download.pytorch.org/whl/cpu;
# on a GPU machine pass TORCH="torch" (or your CUDA build).
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
BIN := $(VENV)/bin

.PHONY: setup run test bench clean

$(BIN)/n2n: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)" $(if $(TORCH_INDEX),--index-url "$(TORCH_INDEX)")
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

setup: $(BIN)/n2n

run: setup
	$(BIN)/n2n search

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/overhead.py

# Only what setup made: runs/ holds your searches and is never removed by make.
clean:
	rm -rf $(VENV)
