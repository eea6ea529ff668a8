# Everything a newcomer needs: `make demo` and `make test` set up a virtual
# environment in .venv first (Python 3.10+ and the package registries only).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv demo test lint typecheck check bench clean

venv: $(STAMP)

# The editable install also builds the compiled parser (pmta_pipe/_fastpath.c) in place;
# without a C compiler it installs the pure-Python parser alone (see setup.py). The
# find removes the empty pmta_pipe/ folder that uninstalling an earlier, hatchling-built
# install leaves in site-packages, which would hide the package.
$(STAMP): pyproject.toml setup.py pmta_pipe/_fastpath.c
	sh scripts/make-venv.sh $(PYTHON) $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	find $(VENV)/lib/*/site-packages/pmta_pipe -depth -type d -empty -delete 2>/dev/null || true
	touch $(STAMP)

# Pipe the bundled sample accounting stream through `pmta-pipe ingest` into the
# embedded PostgreSQL, then print what was loaded per record type.
demo: venv
	$(BIN)/pmta-pipe ingest --source demo-host < samples/acct-sample.csv
	$(BIN)/python samples/count_types.py

test: venv
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check pmta_pipe tests bench samples
	$(BIN)/ruff format --check pmta_pipe tests bench samples

typecheck: venv
	$(BIN)/mypy --strict

check: lint typecheck test

bench: venv
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) dist build .pytest_cache .mypy_cache .ruff_cache pmta_pipe/_fastpath.*.so
