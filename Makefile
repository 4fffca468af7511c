# Two commands do everything on a fresh machine:  make demo  and  make test.
# Both create .venv/ first when it is missing (make setup).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# MXNet starts one OpenMP thread unless told otherwise; use every core.
export OMP_NUM_THREADS ?= $(shell nproc 2>/dev/null || echo 2)

DEMO_DIR ?= build/demo

.PHONY: setup demo test test-quick bench notebooks clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip setuptools wheel
	$(PY) -m pip install -e ".[cpu,serve,notebook,dev]"
	$(PY) -c "import ferlib, mxnet; print('ferlib', ferlib.__version__, 'mxnet', mxnet.__version__)"
	touch $@

demo: setup
	$(PY) -m ferlib demo --data data --out $(DEMO_DIR)

test: setup
	$(PY) -m pytest -ra

test-quick: setup
	$(PY) -m pytest -ra -m "not slow"

bench: setup
	$(PY) bench/bench_preprocess.py

clean:
	rm -rf build runs
