# Everything a fresh machine (python3 + make only) needs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
REPO   ?= repo
STAMP  := $(VENV)/.installed

.PHONY: demo test bench clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/forcedphot simulate --recipe default --repo $(REPO)
	$(BIN)/forcedphot run --repo $(REPO)
	$(BIN)/forcedphot status --repo $(REPO)
	$(BIN)/forcedphot sql --repo $(REPO) "SELECT band, count(*) AS n_rows, round(median(psfFlux), 1) AS median_psfFlux_nJy, round(avg(psfMag), 3) AS mean_psfMag FROM forced_source WHERE detect_isPrimary AND NOT psfFlux_flag GROUP BY band ORDER BY band"

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/forcedphot bench --repo bench-repo

clean:
	rm -rf $(VENV) $(REPO) bench-repo .pytest_cache
