"""ferlib where its readers are: today's Colab (emulated) and Python 3.13, each in a fresh environment.

Slow (each builds a virtual environment and installs into it), and run by `make test` in CI.
"""
import json

import pytest

from environments import REPO, child_env, copy_repository, find_python, installed, make_venv, run

# What today's Colab ships (numpy is already imported when the first cell runs).
COLAB_NUMPY, COLAB_OPENCV = "2.0.2", "4.12.0.88"


@pytest.mark.slow
def test_notebook_01_runs_on_an_emulated_colab_without_touching_numpy(tmp_path, monkeypatch):
    """Colab as a new user meets it: Python 3.12 with numpy 2.0.2, pandas and OpenCV installed and
    numpy imported before the first cell; the repository cloned into content/ferlib and the kernel
    started in content/, where the clone's folder shadows the package."""
    papermill = pytest.importorskip("papermill")
    python = make_venv(find_python("3.12"), tmp_path / "colab")
    run(python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", f"numpy=={COLAB_NUMPY}",
        "pandas", f"opencv-python-headless=={COLAB_OPENCV}", "scikit-image", "ipykernel", "jinja2")
    preinstalled = installed(python)
    site = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip()
    stand_in = tmp_path / "colab" / site.split("/colab/", 1)[1] / "google" / "colab"
    stand_in.mkdir(parents=True)
    (stand_in / "__init__.py").write_text('"""Stand-in for Colab\'s google.colab: its presence marks Colab."""\n')
    startup = tmp_path / "ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00-colab.py").write_text("import numpy, pandas, google.colab  # what Colab's kernel has loaded\n")

    content = tmp_path / "content"
    copy_repository(content / "ferlib")  # what `!git clone URL` makes
    kernels = tmp_path / "jupyter" / "kernels" / "colab-emulation"
    kernels.mkdir(parents=True)
    env = {"IPYTHONDIR": str(tmp_path / "ipython"), "OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE",
           "PATH": child_env()["PATH"]}
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Colab emulation", "language": "python", "env": env}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))

    executed = papermill.execute_notebook(
        str(content / "ferlib" / "notebooks" / "01_data.ipynb"), str(tmp_path / "01_data.ipynb"),
        parameters={"QUICK": True, "SYNTHETIC_FACES": 600}, kernel_name="colab-emulation", cwd=str(content),
        progress_bar=False, execution_timeout=1800)

    outputs = ["".join(o.get("text", "")) for c in executed["cells"] for o in c.get("outputs", [])]
    setup_said = next(text for text in outputs if "ferlib ready" in text)
    assert f"numpy {COLAB_NUMPY} kept" in "".join(outputs) and "will train on the CPU" in setup_said
    assert (content / "ferlib" / "build" / "01_data" / "cache-synthetic" / "ferplus.npz").is_file()
    after = installed(python)
    changed = {name: (version, after[name]) for name, version in preinstalled.items() if after.get(name) != version}
    assert not changed, f"the first cell changed what 'Colab' shipped: {changed}"
    assert after["numpy"] == COLAB_NUMPY and after["mxnet"] == "1.9.1"
    run(python, "-m", "pip", "check")
    assert [name for name in after if name.startswith("opencv")] == ["opencv-python-headless"]


@pytest.mark.slow
def test_core_suite_passes_on_python_3_13(tmp_path):
    """Python 3.13 has numpy 2 wheels only: `python -m ferlib.install --device cpu` installs ferlib,
    MXNet 1.9.1 and the rest, and the not-slow suite (training included) passes there."""
    python = make_venv(find_python("3.13"), tmp_path / "py313")
    env = child_env(OMP_NUM_THREADS=2, OMP_WAIT_POLICY="PASSIVE")
    run(python, "-m", "ferlib.install", "--device", "cpu", "--extras", "serve,dev", cwd=REPO, env=env)
    run(python, "-m", "pip", "check", env=env)
    versions = installed(python)
    assert int(versions["numpy"].split(".")[0]) >= 2 and versions["mxnet"] == "1.9.1"
    out = run(python, "-m", "pytest", "-q", "-m", "not slow", "-p", "no:cacheprovider", "tests", cwd=REPO, env=env)
    assert " passed" in out.splitlines()[-1] and "failed" not in out.splitlines()[-1]
