# Quickstart: `make demo` trains the embedded default (digits); `make test` runs the suite.
# Both create and fill .venv on first use.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
WORKDIR ?= workdirs/digits_dit

.PHONY: demo test lint clean

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/python launch/train.py --config=configs/digits_dit.py --workdir=$(WORKDIR)

test: lint
	$(VENV)/bin/python -m pytest -q -n 2 --durations=15

# Style and the import layering (pyproject.toml [tool.importlinter]); part of `make test`.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) workdirs
