# `make` alone lists the targets. Everything runs in .venv (made by `make install`);
# override with PY=python3 where the packages are already installed (e.g. a GPU machine).
VENV ?= .venv
PY ?= $(VENV)/bin/python
TORCH ?= 2.13.0
PYTEST = $(PY) -m pytest
CONFIG ?= experiments/configs/default.yaml
EXPERIMENT ?= default
TRACKING_URI ?= sqlite:///mlflow.db
PORT ?= 5000
DEVICE ?= cpu
BENCH_OUT ?= reports

.DEFAULT_GOAL := help
.PHONY: help install test test-all test-e2e test-cluster mutants tracking-server tracking-user tracking-server-stop test-gpu bench bench-quick sweep ui analyze notebooks lint format lock clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install: ## create .venv and install the project + dev tools at the tested versions (constraints.txt)
	python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,cluster]'
	@$(VENV)/bin/python -c "import torch, mlflow, sklearn, pandas; print(f'installed: torch {torch.__version__}, mlflow {mlflow.__version__}, scikit-learn {sklearn.__version__}, pandas {pandas.__version__}')"

test: ## the fast suite (everything but `slow`, `e2e` and `cluster`; `gpu` tests skip without CUDA)
	$(PYTEST) -m "not slow and not e2e and not cluster"

test-all: ## every test, `slow` ones included
	$(PYTEST)

mutants: ## the wrong programs the suite must catch, each applied to a copy (slow, a few minutes)
	$(PYTEST) -m slow tests/test_mutants.py -rA

test-e2e: ## the MLflow UI in headless Chromium (apt-get install chromium; pip install playwright)
	$(PYTEST) -m e2e

test-cluster: ## the sweep on a Dask cluster against a PostgreSQL-backed MLflow server (.ci/run starts them)
	$(PYTEST) -m cluster

tracking-server: ## MLflow with logins, on a private PostgreSQL, on 127.0.0.1:5000 (data and credentials in .tracking/)
	PY=$(PY) scripts/tracking-server.sh start

tracking-user: ## add user NAME (ROLE=read or edit, default edit) to it, as its admin; prints the password once
	@test -n "$(NAME)" || { echo "error: NAME is missing: make tracking-user NAME=alice ROLE=edit (or ROLE=read)" >&2; exit 2; }
	@PY=$(PY) scripts/tracking-server.sh user "$(NAME)" --role "$(or $(ROLE),edit)"

tracking-server-stop: ## stop it (the data stays in .tracking/)
	PY=$(PY) scripts/tracking-server.sh stop

test-gpu: ## only the CUDA tests; REQUIRE_GPU=1: a test that skips (no CUDA) fails
	REQUIRE_GPU=1 $(PYTEST) -m gpu

bench: ## speed as ratios to the limits (memory floor, K runs, MLflow floor) → reports/bench.{json,md}; DEVICE=cuda on a GPU
	$(PY) -m experiments bench --device $(DEVICE) --out $(BENCH_OUT) --tracking-uri $(TRACKING_URI)

bench-quick: ## the same, smaller (about 2 minutes on 2 cores)
	$(PY) -m experiments bench --quick --device $(DEVICE) --out $(BENCH_OUT) --tracking-uri $(TRACKING_URI)

sweep: ## the main job: every run of CONFIG (default experiments/configs/default.yaml) into TRACKING_URI
	$(PY) -m experiments sweep $(CONFIG) --tracking-uri $(TRACKING_URI)

ui: ## the MLflow UI for TRACKING_URI on 127.0.0.1:PORT (5000); prints the latest sweep's URL
	$(PY) -m experiments ui --tracking-uri $(TRACKING_URI) --port $(PORT)

analyze: ## report.html, CSVs and figures for the latest sweep of EXPERIMENT (default: default) → reports/; BASELINE=default holds a halving sweep against its full grid
	$(PY) -m analysis report --experiment $(EXPERIMENT) --tracking-uri $(TRACKING_URI) $(if $(BASELINE),--baseline $(BASELINE))

notebooks: ## execute analysis/notebooks/ against the latest sweep of EXPERIMENT → reports/EXPERIMENT/notebooks/
	$(PY) -m analysis notebooks --experiment $(EXPERIMENT) --tracking-uri $(TRACKING_URI)

lint: ## ruff: lint and formatting check
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: ## ruff: fix what can be fixed and format
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

lock: ## re-resolve the dev environment into constraints.txt (torch pinned by TORCH=...)
	rm -rf .lock-venv && python3 -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet torch==$(TORCH) -e '.[dev,cluster]' playwright
	{ sed -n '/^#/p' constraints.txt; .lock-venv/bin/python -m pip freeze --exclude-editable \
	  | sed 's/^torch==.*/torch==$(TORCH)/'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt && rm -rf .lock-venv

clean: ## remove caches and build leftovers (keeps .venv and mlflow.db)
	rm -rf .pytest_cache .ruff_cache .hypothesis build dist *.egg-info
	find . -name __pycache__ -not -path './.venv/*' -prune -exec rm -rf {} +
