# The few commands a user needs. `make run` on a fresh machine: venv, install, dvc repro.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# No network here: keep DVC and MLflow from phoning home (and waiting on it).
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: help setup run test test-fast lint ui bench seeds server remote readme docs check-example \
        plots plots-template exp
.DEFAULT_GOAL := help

help:  ## list the targets (this text)
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## (.*)/  make \1\t\2/' | expand -t 22

$(BIN)/activate: requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt -r requirements-dev.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

setup: $(BIN)/activate  ## create the virtual environment: the pinned requirements, then shiftwatch itself (editable, `shiftwatch` command)

run: setup  ## run the whole pipeline (only what changed reruns)
	dvc repro

test: setup lint  ## lint, then the test suite (unit tests + a real dvc repro / exp run on a small copy)
	$(BIN)/python -m pytest -q

test-fast: setup  ## the unit tests only (no server, browser, dvc or training; about a minute): pytest -m "not slow"
	$(BIN)/python -m pytest -q -m "not slow"

lint: setup  ## ruff (rules, then formatting) and mypy (types of the package), configured in pyproject.toml
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

ui: setup  ## MLflow UI on http://127.0.0.1:5000 against the project's store
	@echo "open http://127.0.0.1:5000/#/experiments?workflowType=machine_learning (MLflow 3 opens on GenAI pages otherwise)"
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port 5000

bench: setup  ## timings: full dvc repro, dvc exp run, a queued sweep of 4, training/inference speed, MMD at 10,000 per side, check local vs served (~40 min)
	PYTHONPATH=tests $(BIN)/python benchmarks/bench_pipeline.py  # tests/: the temp-repo recipe it shares
	$(BIN)/python benchmarks/bench_mmd.py
	$(BIN)/python benchmarks/bench_check.py

seeds: setup  ## the headline over training seeds 42, 1, 2: three queued experiments (~25 min), then make readme
	PATH=$(BIN):$$PATH $(BIN)/python tools/seed_spread.py --seeds 42 1 2

server: setup  ## a team MLflow server: PostgreSQL backend, proxied artifacts, on 127.0.0.1:5050 (Ctrl-C stops)
	$(BIN)/python tools/team_server.py --folder .team-server --port 5050

remote:  ## make remote REMOTE=<path, s3://bucket/prefix, ...>: set the default DVC remote (then `dvc push`)
	@test -n "$(REMOTE)" || { echo "make remote: set REMOTE, e.g. make remote REMOTE=/shared/shiftwatch-dvc or REMOTE=s3://bucket/shiftwatch" >&2; exit 2; }
	dvc remote add --default --force storage "$(REMOTE)"

readme: setup  ## refresh the generated tables in README.md and docs/*.md from metrics/*.json
	$(BIN)/python tools/readme.py

exp: setup  ## the params and metrics that differ between HEAD's experiments, one row each, no dep hashes (EXP_ARGS="--rev <commit>")
	$(BIN)/python tools/exp_table.py $(EXP_ARGS)

plots: plots-template  ## dvc plots show into dvc_plots/index.html, Vega inlined: the plots draw without network
	dvc plots show --out dvc_plots
	@echo "open dvc_plots/index.html in a browser (no network needed)"

plots-template: node_modules/.package-lock.json | $(BIN)/activate  ## DVC's plots page with the pinned Vega inlined (npm ci once), set in .dvc/config.local
	$(BIN)/python tools/plots_template.py --out .dvc/plots_page_offline.html
	dvc config --local plots.html_template plots_page_offline.html

node_modules/.package-lock.json: package.json package-lock.json
	@command -v npm >/dev/null || { echo "make plots-template: npm not found; install Node.js (Debian: apt-get install nodejs npm)" >&2; exit 2; }
	npm ci --no-audit --no-fund --ignore-scripts

docs: setup  ## build the documentation site into site/ (offline; --strict: a broken link or a page outside the nav fails)
	$(BIN)/mkdocs build --strict --site-dir site

check-example: setup  ## a real `shiftwatch check` on 1,000 B_shift images, saved for docs/operations.md
	$(BIN)/python -c "import numpy as np; from shiftwatch.core.io import load_set; \
	np.save('data/b_shift_sample.npy', load_set('data/shifted/b_shift.npz').images[:1000])"
	echo '$$ shiftwatch check data/b_shift_sample.npy' > metrics/check_example.txt
	-$(BIN)/shiftwatch check data/b_shift_sample.npy >> metrics/check_example.txt; \
	echo "(exit code $$?)" >> metrics/check_example.txt
