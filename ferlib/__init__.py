"""ferlib: facial emotion recognition on FER+ with Apache MXNet Gluon.

One module per stage of the notebook series::

    ferlib.formats     the layout of fer2013.csv and fer2013new.csv (48x48 faces, splits, headers)
    ferlib.data        read fer2013.csv / fer2013new.csv, the prepared cache, Gluon datasets
    ferlib.labels      the four FER+ label schemes (majority, probability, crossentropy, multi_target)
    ferlib.transforms  face crop, 64x64, augmentation and intensity normalisation
    ferlib.synth       the built-in synthetic FER-format dataset
    ferlib.model       the networks (get_model) and ferlib.losses their losses
    ferlib.train       the training loop and its recipes
    ferlib.predict     the one prediction path (validation and evaluation), test-time views
    ferlib.metrics     accuracy, the crowd, calibration: pure functions of probabilities
    ferlib.evaluate    a run judged on a split: every figure to JSON, and the report
    ferlib.saliency    Grad-CAM; ferlib.plots draws all of these
    ferlib.serving     the model archive, the Multi Model Server handler, the front door, the client
    ferlib.web         the web page for the model server (python -m ferlib web)
    ferlib.export      ONNX export
    ferlib.demo        ``make demo``, the notebooks' data preparation, and executing the notebooks
    ferlib.run         the run folder: its file names, its config, its exported network; "pretrained"
    ferlib.photos      real sample photos from our dependencies (astronaut, Grace Hopper)
    ferlib.scenes      photo-like scenes of FER+ faces with their ground truth (the photo benchmark)
    ferlib.fileio      files written atomically, path errors in plain words
    ferlib.utils       devices (try_gpu, try_all_gpus)
    ferlib.cpu         the CPU's bfloat16 kernels: AVX-512 BF16, and Intel's AMX switched on for oneDNN
    ferlib.cuda        which MXNet build fits this GPU, and the CUDA 11 libraries it loads
    ferlib.install     ``python -m ferlib.install``: MXNet and the rest, without touching numpy
    ferlib.paths       the repository root, and notebook paths relative to it

``import ferlib`` is light: submodules load on first use (``ferlib.data``, ...).
It must come before ``import mxnet``: it makes MXNet 1.9.1 importable on numpy 2,
loads the GPU build's CUDA libraries, lets oneDNN use AMX where the CPU has it and keeps OpenMP to
one team of threads.
``python -m ferlib --help`` lists the command-line verbs over the same functions.
"""
import importlib
import sys

from . import cpu, cuda
from ._mxnet_compat import prepare_mxnet_import
from .errors import FERError

__version__ = "0.1.0"

# These must run before anything imports mxnet (see _mxnet_compat, cuda and cpu for why).
prepare_mxnet_import()
cpu.enable_amx()
cpu.keep_one_openmp_team()
_missing_cuda_libraries = cuda.prepare_mxnet()
if _missing_cuda_libraries:
    print(cuda.missing_message(_missing_cuda_libraries), file=sys.stderr)

#: Loaded on first access, so that ``import ferlib`` needs neither MXNet nor OpenCV.
_LAZY_NAMES = {"EMOTIONS": "labels", "MODES": "labels", "VOTE_COLUMNS": "labels"}
_SUBMODULES = ("cpu", "cuda", "data", "demo", "evaluate", "export", "fileio", "formats", "install", "labels", "losses",
               "metrics", "model", "paths", "photos", "plots", "predict", "run", "saliency", "scenes", "serving",
               "synth", "train", "transforms", "utils", "web")

__all__ = ["EMOTIONS", "MODES", "VOTE_COLUMNS", "FERError", "__version__"]


def __getattr__(name):
    if name in _LAZY_NAMES:
        return getattr(importlib.import_module(f".{_LAZY_NAMES[name]}", __name__), name)
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'ferlib' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_NAMES) | set(_SUBMODULES))
