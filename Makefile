# Two commands do everything on a fresh machine:  make demo  and  make test.
# Both create .venv/ first when it is missing (make setup).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# MXNet starts one OpenMP thread unless told otherwise; use every core.
export OMP_NUM_THREADS ?= $(shell nproc 2>/dev/null || echo 2)
# Idle OpenMP threads sleep instead of spinning: with another busy process (a model server,
# a loader worker) spinning threads made training 4x slower; idle, the cost is about 2%.
export OMP_WAIT_POLICY ?= PASSIVE

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
	$(PY) -m ferlib demo --data data --out $(DEMO_DIR) --notebooks notebooks --notebooks-out build/notebooks

# Execute the tutorial notebooks (quick parameters) into build/notebooks/ for reading.
notebooks: setup
	mkdir -p build/notebooks
	cd notebooks && for nb in 0*.ipynb; do \
		../$(PY) -m papermill "$$nb" "../build/notebooks/$$nb" -p QUICK True --no-progress-bar || exit 1; \
	done

test: setup
	$(PY) -m pytest -ra

test-quick: setup
	$(PY) -m pytest -ra -m "not slow"

bench: setup
	$(PY) bench/bench_preprocess.py
	$(PY) bench/bench_serving.py --quick

clean:
	rm -rf build runs
