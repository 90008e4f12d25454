# Two commands for a new user: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0 || $(BIN)/pip install --quiet torch
	$(BIN)/pip install --quiet -e ".[test]"
	$(BIN)/pip install --quiet --no-deps geoclip==1.3.0
	touch $(STAMP)

## Set up and run the main job: predict where the example photos were taken.
demo: $(STAMP)
	$(BIN)/geoscope predict examples/images/*.jpg

## Set up (with test extras) and run the whole test suite.
## Installs nothing outside .venv: the browser tests skip without Chromium (`apt-get install chromium`).
test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
