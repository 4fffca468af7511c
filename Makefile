# Two commands do everything on a fresh machine:  make demo  and  make test.
# Both create .venv/ first when it is missing (make setup).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# MXNet starts one OpenMP thread unless told otherwise; use every core.
export OMP_NUM_THREADS ?= $(shell nproc 2>/dev/null || echo 2)
# Where processes may share the cores (tests and benches start servers and loader workers), idle
# OpenMP threads sleep instead of spinning: spinning beside another busy process made training 4x slower.
# Training alone (make demo, the train-loop bench) keeps libgomp's default: sleeping threads
# made its epochs 1.1-1.3x longer (docs/results.md, "bfloat16 on the CPU in detail").
test test-quick bench: export OMP_WAIT_POLICY ?= PASSIVE

DEMO_DIR ?= build/demo
# MXNet build: auto installs the GPU build (mxnet-cu112 and the CUDA 11 wheels) when there is
# a GPU MXNet 1.9.1 can use, else the CPU build; or DEVICE=cpu / DEVICE=gpu.
DEVICE ?= auto

.PHONY: setup demo test test-quick bench notebooks lab clean

setup: $(VENV)/.installed

# ferlib's own installer: MXNet and gluoncv go in without their stale numpy/OpenCV pins.
$(VENV)/.installed: pyproject.toml ferlib/install.py ferlib/cuda.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m ferlib.install --device $(DEVICE) --extras serve,notebook,dev
	$(PY) -m pip check
	$(PY) -c "import ferlib, mxnet, numpy; print('ferlib', ferlib.__version__, '| mxnet', mxnet.__version__, '| numpy', numpy.__version__)"
	touch $@

# JupyterLab on the notebooks, with this environment as the kernel.
lab: setup
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks

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
	env -u OMP_WAIT_POLICY OMP_NUM_THREADS=2 $(PY) bench/bench_train_loop.py $(if $(wildcard build/cache-real),--data build/cache-real)
	env -u OMP_WAIT_POLICY OMP_NUM_THREADS=2 $(PY) bench/bench_openmp_team.py $(if $(wildcard build/cache-real),--data build/cache-real)
	$(PY) bench/bench_photos.py --scenes 100
	$(PY) bench/bench_serving.py --quick
	$(PY) bench/bench_serving.py --quick --baseline --run pretrained --photos $(or $(wildcard ../shared/data/faces),samples)

clean:
	rm -rf build runs
