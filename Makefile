# Everything a fresh machine (python3 + make only) needs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
REPO   ?= repo
STAMP  := $(VENV)/.installed

.PHONY: demo test clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/forcedphot simulate --recipe default --repo $(REPO) --overwrite
	$(BIN)/forcedphot run --repo $(REPO)
	$(BIN)/forcedphot status --repo $(REPO)
	$(BIN)/forcedphot sql --repo $(REPO) --file sql/examples/star_pulls.sql

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=25

clean:
	rm -rf $(VENV) $(REPO) bench-repo .pytest_cache
