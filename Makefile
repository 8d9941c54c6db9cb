# Two entry points for a fresh machine: `make demo` (the main job on the embedded demo data) and
# `make test` (the test suite). Both create or refresh the virtual environment first.
PYTHON ?= python3.11
VENV ?= .venv
# The CPU wheel first, so nothing later pulls a CUDA build; override for a GPU machine, e.g.
# make demo TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>"
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: demo test env clean

env: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

demo: env
	$(BIN)/cemg demo

test: env
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs cache
