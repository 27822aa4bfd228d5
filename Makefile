# Everyday tasks. Each target bootstraps .venv/ when it is missing (see README).
PY := .venv/bin/python
.PHONY: demo test fast lint format bench bench-smoke repro params stack

demo:            ## the demo pipeline (offline, CPU), prints where the reports are
	python3 -m flows.bootstrap demo
test:            ## lint + the whole test suite, slow end-to-end tests included (what CI runs)
	python3 -m flows.bootstrap test
fast:            ## the test suite without the slow end-to-end tests
	python3 -m flows.bootstrap test -m "not slow"
lint:
	python3 -m flows.bootstrap env && .venv/bin/ruff check . && .venv/bin/ruff format --check .
format:
	.venv/bin/ruff format . && .venv/bin/ruff check --fix .
bench:           ## side-by-side performance runs (not part of the tests' pass/fail)
	python3 -m flows.bootstrap env && for b in benchmarks/[a-z]*.py; do case $$b in */test_*) continue;; esac; echo "== $$b"; $(PY) $$b || exit 1; done
bench-smoke:     ## the benchmarks at toy sizes: do they still run? (not in the test suite)
	python3 -m flows.bootstrap env && $(PY) -m pytest -q benchmarks
repro:           ## reproduce every DVC stage of the default profile
	python3 -m flows.bootstrap env && PATH=$(CURDIR)/.venv/bin:$$PATH .venv/bin/dvc repro
params:          ## regenerate params.yaml and dvc.yaml from the parameter models and registry
	.venv/bin/gdl params --write && .venv/bin/gdl dvc-yaml --write && .venv/bin/gdl prefect-yaml --write && .venv/bin/gdl params --reference --write
stack:           ## the local stack: Prefect server + pools + deployments + workers (Ctrl-C stops)
	python3 -m flows.bootstrap env && .venv/bin/gdl stack up
