"""GPU selection and CUDA library loading, with a fake nvidia-smi and fake library folders.

No GPU that MXNet 1.9.1 can use is reachable from this project's machines: these tests check the
logic that decides and loads, on stand-ins built here (real ELF libraries made with the C compiler).
"""
import json
import shutil
import subprocess
import sys
import textwrap

import mxnet as mx
import pytest

from ferlib import cuda, utils


def fake_nvidia_smi(tmp_path, monkeypatch, output, exit_code=0):
    """Put an ``nvidia-smi`` that prints ``output`` first on PATH."""
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\ncat <<'EOF'\n{output}\nEOF\nexit {exit_code}\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}:{__import__('os').environ['PATH']}")


def test_nvidia_smi_is_read_into_gpus(tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path, monkeypatch, "0, Tesla T4, 7.5\n1, NVIDIA H100 80GB HBM3, 9.0\n2, NVIDIA L4, 8.9")
    gpus = cuda.query_gpus()
    assert gpus == [cuda.GPU(0, "Tesla T4", (7, 5)), cuda.GPU(1, "NVIDIA H100 80GB HBM3", (9, 0)),
                    cuda.GPU(2, "NVIDIA L4", (8, 9))]
    assert [g.supported for g in gpus] == [True, False, True]  # 8.9 runs sm_86 code; 9.0 does not
    assert not cuda.GPU(0, "Quadro K6000", (3, 5)).supported


@pytest.mark.parametrize("output, code", [("", 9), ("0, Tesla K80, [N/A]", 0), ("garbage", 0)])
def test_no_gpu_when_nvidia_smi_fails_or_says_nothing_usable(tmp_path, monkeypatch, output, code):
    fake_nvidia_smi(tmp_path, monkeypatch, output, code)
    assert cuda.query_gpus() == []


def test_no_nvidia_smi_means_no_gpu(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert cuda.query_gpus() == []


T4, H100 = cuda.GPU(0, "Tesla T4", (7, 5)), cuda.GPU(1, "NVIDIA H100", (9, 0))


def test_status_cpu_build_on_a_gpu_machine_says_so_and_how_to_fix():
    status = cuda.gpu_status([T4], build=cuda.MXNET_CPU)
    assert status.usable == ()
    assert "CPU build" in status.message and "Tesla T4" in status.message
    assert "python -m ferlib.install --device gpu" in status.message


def test_status_gpu_build_uses_the_gpus_its_kernels_run_on():
    assert cuda.gpu_status([T4], build=cuda.MXNET_GPU) == cuda.GPUStatus((T4,), (0,), cuda.MXNET_GPU, "")
    mixed = cuda.gpu_status([T4, H100], build=cuda.MXNET_GPU)
    assert mixed.usable == (0,) and "H100" in mixed.message and "using GPU 0 only" in mixed.message
    only_new = cuda.gpu_status([H100], build=cuda.MXNET_GPU)
    assert only_new.usable == () and "compute capability 9.0" in only_new.message
    assert "training on the CPU" in only_new.message


def test_status_missing_libraries_are_named():
    status = cuda.gpu_status([T4], build=cuda.MXNET_GPU, missing_libraries=["libcudnn.so.8"])
    assert status.usable == () and "libcudnn.so.8" in status.message
    assert "--device gpu" in status.message
    assert "--device cpu" in cuda.missing_message([cuda.DRIVER_LIBRARY])


def test_no_gpu_no_message():
    assert cuda.gpu_status([], build=cuda.MXNET_CPU) == cuda.GPUStatus((), (), cuda.MXNET_CPU, "")


def test_every_linked_library_comes_from_a_declared_wheel():
    wheel_folders = {"cuda-runtime": "cuda_runtime", "cublas": "cublas", "cufft": "cufft", "curand": "curand",
                     "cusolver": "cusolver", "cuda-nvrtc": "cuda_nvrtc", "nvtx": "nvtx", "nccl": "nccl",
                     "cudnn": "cudnn"}
    declared = {wheel_folders[w.split("nvidia-")[1].split("-cu11")[0]] for w in cuda.CUDA_WHEELS}
    assert set(cuda.LINKED_LIBRARIES.values()) == declared
    cudnn = next(w for w in cuda.CUDA_WHEELS if "cudnn" in w)
    assert "<9" in cudnn  # libcudnn.so.8


def test_devices_skip_gpus_mxnet_cannot_run(monkeypatch, capsys):
    monkeypatch.setattr(mx.context, "num_gpus", lambda: 2)
    status = cuda.GPUStatus((H100._replace(index=0), T4._replace(index=1)), (1,), cuda.MXNET_GPU, "GPU 0 is too new")
    monkeypatch.setattr(cuda, "prepared_status", lambda: status)
    utils.usable_gpus.cache_clear()
    try:
        assert utils.try_all_gpus() == [mx.gpu(1)]
        assert utils.try_gpu(0) == mx.cpu() and utils.try_gpu(1) == mx.gpu(1)
        assert utils.parse_devices("1") == [mx.gpu(1)]
        with pytest.raises(Exception, match="GPU 0 does not exist"):
            utils.parse_devices("0")
        assert capsys.readouterr().err.count("GPU 0 is too new") == 1  # said once
    finally:
        utils.usable_gpus.cache_clear()


def test_cpu_build_on_gpu_machine_falls_back_to_cpu_with_one_line(monkeypatch, capsys):
    monkeypatch.setattr(mx.context, "num_gpus", lambda: 0)
    monkeypatch.setattr(cuda, "prepared_status", lambda: cuda.gpu_status([T4], build=cuda.MXNET_CPU))
    utils.usable_gpus.cache_clear()
    try:
        assert utils.try_all_gpus() == [mx.cpu()]
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "CPU build" in err
    finally:
        utils.usable_gpus.cache_clear()


# --- loading the libraries: real shared objects with the sonames of the CUDA 11 wheels ---------

def build_library(cc, path, soname, needs=(), search=()):
    source = path.with_suffix(".c")
    source.write_text(f"int ferlib_test_{abs(hash(soname))}(void) {{ return 1; }}\n")
    args = [cc, "-shared", "-fPIC", "-o", str(path), str(source), f"-Wl,-soname,{soname}"]
    args += [f"-L{d}" for d in search] + ["-Wl,--no-as-needed"] + [f"-l:{n}" for n in needs]
    subprocess.run(args, check=True, capture_output=True)
    source.unlink()


@pytest.fixture(scope="module")
def fake_cuda_site(tmp_path_factory):
    """site-packages/nvidia/<folder>/lib/<soname> for every linked library, and a stand-in for
    libmxnet.so that needs them all by soname with no search path of its own (as the wheel's)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build stand-in libraries")
    site = tmp_path_factory.mktemp("site")
    folders = []
    for soname, folder in cuda.LINKED_LIBRARIES.items():
        lib = site / "nvidia" / folder / "lib"
        lib.mkdir(parents=True, exist_ok=True)
        build_library(cc, lib / soname, soname)
        folders.append(lib)
    build_library(cc, site / "libmxnet_standin.so", "libmxnet_standin.so", needs=list(cuda.LINKED_LIBRARIES),
                  search=sorted(set(folders)))
    return site


def run_loader(site, code):
    """Run ``code`` in a fresh interpreter (a library loaded cannot be unloaded) with ``site``."""
    program = textwrap.dedent(f"""
        import ctypes, json, sys
        from ferlib import cuda
        site = {str(site)!r}
        {textwrap.dedent(code).strip().replace(chr(10), chr(10) + '        ')}
    """)
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_mxnet_stand_in_does_not_load_without_the_preload(fake_cuda_site):
    result = run_loader(fake_cuda_site, """
        try:
            ctypes.CDLL(site + "/libmxnet_standin.so")
            print(json.dumps("loaded"))
        except OSError as err:
            print(json.dumps(str(err)))
    """)
    assert "libcudart.so.11.0" in result or "cannot open shared object file" in result


def test_preload_finds_every_library_and_the_stand_in_then_loads(fake_cuda_site):
    result = run_loader(fake_cuda_site, """
        missing = cuda.preload_cuda_libraries([site])
        ctypes.CDLL(site + "/libmxnet_standin.so")
        maps = open("/proc/self/maps").read()
        print(json.dumps({"missing": missing, "mapped": [s for s in cuda.LINKED_LIBRARIES if s in maps]}))
    """)
    assert result["missing"] == []
    assert result["mapped"] == list(cuda.LINKED_LIBRARIES)


def test_a_missing_wheel_is_named(fake_cuda_site, tmp_path):
    site = tmp_path / "site"
    shutil.copytree(fake_cuda_site, site)
    shutil.rmtree(site / "nvidia" / "cudnn")
    found, missing = cuda.find_cuda_libraries([site])
    assert "libcudart.so.11.0" in found and found["libcudart.so.11.0"].parent.parent.name == "cuda_runtime"
    assert "libcudnn.so.8" in missing and all("cudnn" in s for s in missing)
    result = run_loader(site, "print(json.dumps(cuda.preload_cuda_libraries([site])))")
    assert "libcudnn.so.8" in result and "libcudart.so.11.0" not in result


def test_prepare_mxnet_does_nothing_for_the_cpu_build():
    assert cuda.installed_mxnet() == cuda.MXNET_CPU
    assert cuda.prepare_mxnet() == []
