# Everything a fresh machine (a Python >= 3.12 on PATH or in pyenv, and make) needs.
# tools/find-python.sh picks the Python; override with `make PYTHON=/path/to/python3.12`.
PYTHON ?= $(shell tools/find-python.sh)
VENV   ?= .venv
BIN    := $(VENV)/bin
REPO   ?= repo
STAMP  := $(VENV)/.installed

.PHONY: demo test docs clean venv chromium

venv: $(STAMP)

$(STAMP): pyproject.toml setup.py
	@test -n "$(PYTHON)" || { tools/find-python.sh >/dev/null; exit 1; }
	@if [ -x $(BIN)/python ] && ! $(BIN)/python -c 'import sys; sys.exit(sys.version_info < (3, 12))'; then \
	    echo "$(VENV) holds a Python older than 3.12: recreating it with $(PYTHON)"; rm -rf $(VENV); fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,docs]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/forcedphot simulate --recipe default --repo $(REPO) --overwrite
	$(BIN)/forcedphot run --repo $(REPO)
	$(BIN)/forcedphot status --repo $(REPO)
	$(BIN)/forcedphot sql --repo $(REPO) --file sql/examples/star_pulls.sql

# the report's browser test needs chromium: installed when missing and root, else one line says it will skip
chromium:
	@tools/ensure-chromium.sh

test: $(STAMP) chromium
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=25

docs: $(STAMP)
	$(BIN)/python -m sphinx -W --keep-going -b html docs docs/_build/html

clean:
	rm -rf $(VENV) $(REPO) bench-repo docs/_build .pytest_cache
