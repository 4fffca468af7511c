"""python -m ferlib.install: what it plans, what it pins, the metadata it relaxes, and the
environment `make setup` built with it."""
import base64
import hashlib
import importlib.metadata
import subprocess
import sys

import numpy as np
import pytest

from ferlib import cuda, install

from conftest import REPO

T4, H100 = cuda.GPU(0, "Tesla T4", (7, 5)), cuda.GPU(0, "NVIDIA H100", (9, 0))


def test_device_choice_follows_the_gpu():
    assert install.choose_device("auto", gpus=[]) == ("cpu", "")
    assert install.choose_device("auto", gpus=[T4]) == ("gpu", "")
    device, why = install.choose_device("auto", gpus=[H100])
    assert device == "cpu" and "H100" in why and "CPU build" in why
    assert install.choose_device("gpu", gpus=[]) == ("gpu", "")


def flat(steps):
    return [" ".join(map(str, step)) for step in steps]


def test_cpu_plan_installs_mxnet_and_gluoncv_without_their_dependencies():
    steps = flat(install.plan("cpu", "serve", repo=REPO, python="PY", installed_build=None, constraints="C.txt"))
    assert steps[0].endswith(f"-e {REPO}[serve] -c C.txt")
    assert "--no-deps mxnet==1.9.1 gluoncv==0.10.5.post0" in steps[1]
    assert len(steps) == 2 and not any("nvidia" in s or "uninstall" in s for s in steps)


def test_gpu_plan_swaps_the_build_and_adds_the_cuda_11_wheels():
    steps = flat(install.plan("gpu", "", repo=REPO, python="PY", installed_build=cuda.MXNET_CPU))
    assert steps[0].endswith(f"-e {REPO}")
    assert steps[1] == "PY -m pip uninstall -y mxnet"  # both builds write mxnet/
    assert "--no-deps mxnet-cu112==1.9.1" in steps[2]
    assert all(wheel in steps[3] for wheel in cuda.CUDA_WHEELS) and "nvidia-cudnn-cu11>=8.9,<9" in steps[3]


def test_numpy_and_everything_already_imported_is_pinned():
    pins = install.pinned_installed(modules=["yaml", "json"])
    assert f"numpy=={np.__version__}" in pins
    assert f"PyYAML=={importlib.metadata.version('PyYAML')}" in pins
    assert not any(p.lower().startswith(("ferlib==", "pip==", "setuptools==")) for p in pins)


def test_dry_run_prints_the_plan_and_installs_nothing(capsys):
    before = install.installed_versions()
    assert install.install("cpu", "serve", REPO, dry_run=True) == "cpu"
    out = capsys.readouterr().out
    assert "--no-deps mxnet==1.9.1" in out and f"numpy=={np.__version__}" in out
    assert install.installed_versions() == before


def fake_distribution(site, name, requirements):
    info = site / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    metadata = "Metadata-Version: 2.1\nName: {}\nVersion: 1.0\n{}".format(
        name, "".join(f"Requires-Dist: {r}\n" for r in requirements))
    (info / "METADATA").write_text(metadata)
    (info / "RECORD").write_text(f"{info.name}/METADATA,sha256=stale,1\n{info.name}/RECORD,,\n")
    return info


def test_stale_requirements_are_relaxed_in_metadata_and_record(tmp_path, monkeypatch):
    info = fake_distribution(tmp_path, "fakemxnet", ["numpy (<2.0.0,>1.16.0)", "requests (<3,>=2.20.0)",
                                                     "graphviz (<0.9.0,>=0.8.1)", "onnx ; extra == 'onnx'"])
    monkeypatch.syspath_prepend(str(tmp_path))
    changed = install.relax_stale_requirements("fakemxnet", {"numpy": "numpy>1.16.0", "graphviz": None})
    assert changed == [("numpy (<2.0.0,>1.16.0)", "numpy>1.16.0"), ("graphviz (<0.9.0,>=0.8.1)", None)]
    requires = importlib.metadata.requires("fakemxnet")
    assert requires == ["numpy>1.16.0", "requests (<3,>=2.20.0)", "onnx ; extra == 'onnx'"]
    data = (info / "METADATA").read_bytes()
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    assert f"{info.name}/METADATA,sha256={digest},{len(data)}" in (info / "RECORD").read_text()
    assert install.relax_stale_requirements("fakemxnet", {"numpy": "numpy>1.16.0"}) == []  # idempotent


def test_this_environment_is_consistent_with_one_opencv():
    """What `make setup` (python -m ferlib.install) built: pip check clean, one cv2 distribution,
    MXNet without its numpy<2 pin, and numpy as the resolver chose it."""
    check = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    opencv = [d.metadata["Name"] for d in importlib.metadata.distributions()
              if (d.metadata["Name"] or "").lower().startswith("opencv")]
    assert opencv == ["opencv-python-headless"], opencv
    mxnet_requires = importlib.metadata.requires(cuda.installed_mxnet()) or []
    assert not any("<2" in r for r in mxnet_requires if r.startswith("numpy"))
