# The two commands of the README: `make demo` and `make test`. Both set everything up.
VENV ?= .venv
PY := $(VENV)/bin/python
export DAGSTER_HOME ?= $(CURDIR)/.demo/dagster_home

.PHONY: install instance demo test test-fast lint ui clean bench faults oscd-pretrain oscd-eval

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

# A local Dagster instance for the demo's runs and the UI (telemetry off: nothing leaves the machine).
instance:
	mkdir -p $(DAGSTER_HOME)
	test -f $(DAGSTER_HOME)/dagster.yaml || printf 'telemetry:\n  enabled: false\n' > $(DAGSTER_HOME)/dagster.yaml

demo: install instance
	$(PY) -m assets.demo

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest

# Everything but the tests marked slow (whole chains, servers, the browser, DDP, kill -9).
test-fast: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -m "not slow"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

ui: install instance
	$(VENV)/bin/dagster-webserver -w workspace.yaml -h 127.0.0.1 -p 3000

# torchgeo, for benchmarks/tiling.py's side-by-side run only: its own environment, never the
# project's. torchgeo 0.8.1 is the newest for Python 3.11 and needs `requests` by hand; torchvision
# works here only as 0.29.1 with torch 2.14.1 (about 6 GB).
TORCHGEO_VENV := benchmarks/.venv-torchgeo
$(TORCHGEO_VENV)/.installed:
	test -x $(TORCHGEO_VENV)/bin/python || python3 -m venv $(TORCHGEO_VENV)
	$(TORCHGEO_VENV)/bin/python -m pip install --quiet 'torch==2.14.1' 'torchvision==0.29.1' \
		'torchgeo==0.8.1' 'requests==2.34.2'
	touch $@

# Benchmarks: each prints a table and writes JSON under benchmarks/results/.
bench: install $(TORCHGEO_VENV)/.installed
	$(PY) benchmarks/pac2d.py
	$(PY) benchmarks/train.py
	$(PY) benchmarks/tiling.py
	$(PY) benchmarks/change_screen.py
	$(PY) benchmarks/coregistration.py
	$(PY) benchmarks/inference.py

# Fault injection (docs/reliability.md): STAC faults, kill -9 and rerun, disk full, broken imagery,
# concurrent runs, on the tiny demo world; writes benchmarks/results/faults.json and the doc's table.
faults: install
	OMP_NUM_THREADS=1 $(PY) benchmarks/faults.py

# Pretraining on real Sentinel-2 (the unlabelled OSCD cities) and OSCD evaluation (README: Evaluation).
OSCD_ROOT ?= ../shared/data/oscd
oscd-pretrain: install
	$(PY) -m pipelines.oscd_patches --root "$(OSCD_ROOT)" --out .demo/oscd/patches
	$(PY) -m matter_model.train --config matter_model/configs/oscd.yaml

oscd-eval: install
	$(PY) -m matter_model.evaluate oscd --root "$(OSCD_ROOT)" --out .demo/oscd/metrics.json \
		--maps .demo/oscd/change_maps
	$(PY) -m matter_model.evaluate oscd-finetune --root "$(OSCD_ROOT)" \
		--out .demo/oscd/finetune.json

clean:
	rm -rf .demo
