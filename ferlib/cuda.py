"""Which MXNet build fits this machine's GPU, and the CUDA 11 libraries the GPU build links.

MXNet 1.9.1's GPU wheel, ``mxnet-cu112``, links CUDA 11 libraries it does not carry
(:data:`LINKED_LIBRARIES`). NVIDIA publishes them on the package registry as the
``nvidia-*-cu11`` wheels (:data:`CUDA_WHEELS`), which install into
``site-packages/nvidia/<name>/lib``, a folder the MXNet wheel's own search path
(``$ORIGIN``) never looks in. :func:`preload_cuda_libraries` therefore loads them
by full path, globally, before ``import mxnet``; the dynamic loader then finds
each soname already loaded. ``ferlib/__init__.py`` calls :func:`prepare_mxnet`.

The wheel carries kernels for compute capability 5.0 to 8.6 and no PTX: a GPU
of major version 8 (T4 is 7.5, A100 8.0, L4 8.9) runs them, H100 (9.0) and newer
cannot. :func:`gpu_status` says which GPUs MXNet can use here, and why not.

Standard library only: the installer uses this module before anything else is installed.
"""
import ctypes
import functools
import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

#: The two MXNet 1.9.1 builds ferlib installs: both write the same ``mxnet`` package.
MXNET_VERSION = "1.9.1"
MXNET_CPU, MXNET_GPU = "mxnet", "mxnet-cu112"

#: Compute capabilities the 1.9.1 CUDA wheels have kernels for (SASS only, no PTX):
#: 5.0 up to 8.6, which also runs on any later 8.x GPU (same major version).
MIN_COMPUTE_CAPABILITY = (5, 0)
MAX_COMPUTE_MAJOR = 8

#: What ``libmxnet.so`` of mxnet-cu112 1.9.1 needs (``readelf -d``), in load order
#: (a library after those it needs): soname -> the folder under site-packages/nvidia/.
LINKED_LIBRARIES = {
    "libcudart.so.11.0": "cuda_runtime",
    "libcublasLt.so.11": "cublas",   # needed by cuBLAS and cuSOLVER
    "libcublas.so.11": "cublas",
    "libcufft.so.10": "cufft",
    "libcurand.so.10": "curand",
    "libcusolver.so.11": "cusolver",
    "libnvrtc.so.11.2": "cuda_nvrtc",  # NVRTC kept the 11.2 soname through CUDA 11.8
    "libnvToolsExt.so.1": "nvtx",
    "libnccl.so.2": "nccl",
    # cuDNN 8 opens its sub-libraries by soname at run time: load them too.
    "libcudnn_ops_infer.so.8": "cudnn",
    "libcudnn_ops_train.so.8": "cudnn",
    "libcudnn_cnn_infer.so.8": "cudnn",
    "libcudnn_cnn_train.so.8": "cudnn",
    "libcudnn_adv_infer.so.8": "cudnn",
    "libcudnn_adv_train.so.8": "cudnn",
    "libcudnn.so.8": "cudnn",
}
#: The driver's library: it comes with the NVIDIA driver, never from a wheel.
DRIVER_LIBRARY = "libcuda.so.1"

#: The registry wheels that provide LINKED_LIBRARIES (cuDNN must stay at 8: the soname is .so.8).
CUDA_WHEELS = (
    "nvidia-cuda-runtime-cu11==11.8.89",
    "nvidia-cublas-cu11==11.11.3.6",
    "nvidia-cufft-cu11==10.9.0.58",
    "nvidia-curand-cu11==10.3.0.86",
    "nvidia-cusolver-cu11==11.4.1.48",
    "nvidia-cuda-nvrtc-cu11==11.8.89",
    "nvidia-nvtx-cu11==11.8.86",
    "nvidia-nccl-cu11==2.21.5",
    "nvidia-cudnn-cu11>=8.9,<9",
)


class GPU(NamedTuple):
    index: int
    name: str
    compute_capability: tuple  # (major, minor)

    @property
    def supported(self):
        """Whether the MXNet 1.9.1 CUDA wheel has kernels this GPU can run."""
        return MIN_COMPUTE_CAPABILITY <= self.compute_capability and self.compute_capability[0] <= MAX_COMPUTE_MAJOR

    def __str__(self):
        major, minor = self.compute_capability
        return f"GPU {self.index} ({self.name}, compute capability {major}.{minor})"


class GPUStatus(NamedTuple):
    """What this machine has, what the installed MXNet can use, and a one-line reason when not all."""
    gpus: tuple          # every GPU nvidia-smi lists
    usable: tuple        # indices MXNet can train on
    build: str           # installed MXNet distribution: "mxnet", "mxnet-cu112" or None
    message: str         # "" when nothing needs saying


def query_gpus(nvidia_smi="nvidia-smi"):
    """The GPUs ``nvidia-smi`` lists, as :class:`GPU` tuples; ``[]`` without driver or GPU."""
    exe = shutil.which(nvidia_smi)
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "--query-gpu=index,name,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    if out.returncode != 0:
        return []
    gpus = []
    for line in out.stdout.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 3:
            continue
        try:
            major, minor = (int(x) for x in parts[2].split("."))
            gpus.append(GPU(int(parts[0]), parts[1], (major, minor)))
        except ValueError:
            continue  # an old driver without compute_cap: not a GPU we can judge
    return gpus


def installed_mxnet():
    """Name of the installed MXNet distribution (``mxnet``, ``mxnet-cu112``, ...) or ``None``."""
    found = [name for name in (MXNET_GPU, MXNET_CPU) if _version_of(name)]
    if not found:
        others = [d.metadata["Name"] for d in importlib.metadata.distributions()
                  if (d.metadata["Name"] or "").lower().startswith("mxnet-cu")]
        return others[0] if others else None
    return found[0]


def _version_of(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def cuda_library_dirs(search_path=None):
    """``site-packages/nvidia/<name>/lib`` folders on ``search_path`` (default ``sys.path``),
    then the environment's own ``lib`` folder (conda)."""
    dirs = []
    for entry in search_path if search_path is not None else sys.path:
        nvidia = Path(entry or ".") / "nvidia"
        if nvidia.is_dir():
            dirs += sorted(p for p in nvidia.glob("*/lib") if p.is_dir())
    conda_lib = Path(sys.prefix) / "lib"
    if conda_lib.is_dir():
        dirs.append(conda_lib)
    return dirs


def find_cuda_libraries(search_path=None):
    """``(found, missing)``: soname -> path of each library in :data:`LINKED_LIBRARIES` found in
    :func:`cuda_library_dirs`, and the list of sonames found nowhere there."""
    dirs = cuda_library_dirs(search_path)
    found = {}
    for soname, folder in LINKED_LIBRARIES.items():
        preferred = [d for d in dirs if d.parent.name == folder] + dirs
        path = next((d / soname for d in preferred if (d / soname).is_file()), None)
        if path is not None:
            found[soname] = path
    return found, [s for s in LINKED_LIBRARIES if s not in found]


def preload_cuda_libraries(search_path=None):
    """Load the CUDA 11 libraries of :data:`LINKED_LIBRARIES` globally, by full path.

    Returns the sonames that could not be found or loaded (an empty list when all
    loaded). A library the system loader already finds is not required here.
    """
    found, missing = find_cuda_libraries(search_path)
    failed = []
    for soname in LINKED_LIBRARIES:
        if soname in found:
            try:
                ctypes.CDLL(str(found[soname]), mode=ctypes.RTLD_GLOBAL)
                continue
            except OSError:
                pass
        if not _system_loads(soname):
            failed.append(soname)
    return failed


def _system_loads(soname):
    try:
        ctypes.CDLL(soname, mode=ctypes.RTLD_GLOBAL)
        return True
    except OSError:
        return False


def gpu_status(gpus=None, build=None, missing_libraries=()):
    """Judge which GPUs the installed MXNet can use; see :class:`GPUStatus`."""
    gpus = tuple(query_gpus() if gpus is None else gpus)
    build = installed_mxnet() if build is None else build
    if not gpus:
        return GPUStatus(gpus, (), build, "")
    names = ", ".join(str(g) for g in gpus)
    if build != MXNET_GPU:
        return GPUStatus(gpus, (), build, (
            f"this machine has {names}, but the installed MXNet is the CPU build ({build}): training "
            f"on the CPU. For the GPU build run: python -m ferlib.install --device gpu"))
    if missing_libraries:
        return GPUStatus(gpus, (), build, missing_message(missing_libraries))
    usable = tuple(g.index for g in gpus if g.supported)
    too_new = [g for g in gpus if not g.supported]
    message = ""
    if too_new:
        message = (f"{', '.join(str(g) for g in too_new)}: MXNet 1.9.1's CUDA kernels are for compute "
                   f"capability 5.0-8.x only (no PTX), so it cannot run there")
        message += ("; training on the CPU" if not usable else
                    f"; using GPU {', '.join(str(i) for i in usable)} only")
    return GPUStatus(gpus, usable, build, message)


@functools.lru_cache(maxsize=1)
def prepared_status():
    """:func:`gpu_status` of this process, after :func:`prepare_mxnet` (computed once)."""
    missing = prepare_mxnet()
    return gpu_status(missing_libraries=missing)


_preload_result = None


def prepare_mxnet():
    """Make ``import mxnet`` work with the GPU build: load its CUDA libraries first.

    Does nothing (and returns ``[]``) unless ``mxnet-cu112`` is installed and MXNet is not
    imported yet. Returns the sonames that are missing. Also numbers CUDA devices in
    PCI bus order, as ``nvidia-smi`` does, so that GPU i is the same GPU for both.
    """
    global _preload_result
    if _preload_result is not None:
        return _preload_result
    if installed_mxnet() != MXNET_GPU or "mxnet" in sys.modules:
        return []
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    _preload_result = preload_cuda_libraries()
    if not _system_loads(DRIVER_LIBRARY) and DRIVER_LIBRARY not in _preload_result:
        _preload_result.append(DRIVER_LIBRARY)
    return _preload_result


def missing_message(missing):
    """One line on why the GPU build cannot load, and the fix."""
    if list(missing) == [DRIVER_LIBRARY]:
        return (f"ferlib: {MXNET_GPU} is installed but there is no NVIDIA driver ({DRIVER_LIBRARY}): "
                f"on a machine without GPU install the CPU build: python -m ferlib.install --device cpu")
    return (f"ferlib: {MXNET_GPU} is installed but cannot load: {', '.join(missing)} not found; "
            f"install them with: python -m ferlib.install --device gpu")
