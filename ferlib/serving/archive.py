"""Package a training run as a self-contained model archive (``.mar``) for Multi Model Server.

The archive holds everything a worker needs, and nothing it must find
elsewhere except Python, MXNet, OpenCV and Pillow::

    MAR-INF/MANIFEST.json        model name, version, handler (fer_service:handle), runtime python3
    model-symbol.json            the exported graph of the run
    model-0000.params            its weights
    labels.json                  the 8 emotions in output order
    serving.json                 input size, preprocessing, detector settings, request limits, run info
    fer_service.py               entry module: imports the handler below
    fer_runtime/                 ferlib's own files, copied unchanged at packaging time:
        _mxnet_compat.py run.py fileio.py formats.py errors.py labels.py transforms.py serving/handler.py serving/faces.py

The copied ``ferlib`` files live in a package of their own name,
``fer_runtime``, so that the served code is the archive's even on a machine
where ``ferlib`` is installed, and serving works where it is not.
"""
import json
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

from ..errors import FERError
from ..labels import EMOTIONS
from .. import run
from ..transforms import normalization_of
from .handler import FacePredictor, serving_settings

#: Name of the copied package inside the archive, and of the entry module.
RUNTIME_PACKAGE, ENTRY_MODULE = "fer_runtime", "fer_service"
HANDLER = f"{ENTRY_MODULE}:handle"
#: ferlib files the handler imports, relative to the ferlib package, copied as they are.
RUNTIME_FILES = (
    "_mxnet_compat.py",
    "run.py",
    "fileio.py",
    "formats.py",
    "errors.py",
    "labels.py",
    "transforms.py",
    "serving/handler.py",
    "serving/faces.py",
)
_FERLIB_DIR = Path(__file__).resolve().parents[1]
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-.]*$")

_RUNTIME_INIT = '''"""ferlib's serving code, copied into this model archive by ferlib.serving.archive."""
from ._mxnet_compat import prepare_mxnet_import

# Must run before anything imports mxnet (MXNet 1.9.1 under numpy >= 1.24).
prepare_mxnet_import()
'''
_ENTRY = f'''"""Entry module of the model archive: MMS calls handle(data, context)."""
from {RUNTIME_PACKAGE}.serving.handler import handle  # noqa: F401
'''


def _run_summary(run_dir, config):
    summary = {key: config[key] for key in ("model", "model_kwargs", "mode", "input_size", "normalization",
                                            "num_epochs", "ferlib_version") if key in config}
    best = run_dir / run.BEST_JSON
    if best.is_file():
        try:
            summary["best"] = json.loads(best.read_text(encoding="utf-8"))
        except ValueError:
            pass
    summary["run_dir"] = run_dir.name
    return summary


def stage_archive(run_dir, stage_dir, version="1.0", detector=None, limits=None):
    """Write the archive's files (all but the manifest) into ``stage_dir``; returns serving.json's dict."""
    run_dir, stage_dir = run.locate(run_dir), Path(stage_dir)
    if not run_dir.is_dir():
        raise FERError(f"run folder {run_dir} does not exist (train a model first, or check the path)")
    config = run.read_config(run_dir)
    for name in (run.EXPORT_SYMBOL, run.EXPORT_PARAMS):
        if not (run_dir / name).is_file():
            raise FERError(f"{run_dir / name} is missing: the run has no exported network "
                           "(training exports the best epoch; or call ferlib.model.export_net)")
    emotions = list(config.get("emotions", EMOTIONS))
    if emotions != list(EMOTIONS):
        raise FERError(f"{run_dir / run.CONFIG}: emotions {emotions} are not ferlib's {list(EMOTIONS)}")
    if "input_size" not in config:
        raise FERError(f"{run_dir / run.CONFIG} lacks input_size")
    settings = serving_settings(config["input_size"], emotions, detector, limits, normalization_of(config))
    settings["model_version"] = str(version)
    settings["run"] = _run_summary(run_dir, config)

    stage_dir.mkdir(parents=True, exist_ok=True)
    for name in (run.EXPORT_SYMBOL, run.EXPORT_PARAMS):
        shutil.copyfile(run_dir / name, stage_dir / name)
    (stage_dir / run.LABELS).write_text(json.dumps(emotions) + "\n", encoding="utf-8")
    (stage_dir / run.SERVING).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    runtime = stage_dir / RUNTIME_PACKAGE
    (runtime / "serving").mkdir(parents=True, exist_ok=True)
    for name in RUNTIME_FILES:
        shutil.copyfile(_FERLIB_DIR / name, runtime / name)
    (runtime / "__init__.py").write_text(_RUNTIME_INIT, encoding="utf-8")
    (runtime / "serving" / "__init__.py").write_text('"""The model server handler and face detection."""\n',
                                                     encoding="utf-8")
    (stage_dir / f"{ENTRY_MODULE}.py").write_text(_ENTRY, encoding="utf-8")
    _check_loads(stage_dir, run_dir)
    return settings


def _check_loads(stage_dir, run_dir):
    """Load the staged model and run it once, as a worker does when it starts: a network that
    cannot load must fail here, not as a worker that never becomes healthy."""
    try:
        FacePredictor(stage_dir)
    except MemoryError:
        raise
    except Exception as err:
        detail = (str(err).strip().splitlines() or [""])[0][:300]
        raise FERError(f"{run_dir / run.EXPORT_PARAMS} and {run_dir / run.EXPORT_SYMBOL} do not load as a network "
                       f"({type(err).__name__}: {detail}): the files are damaged or do not belong together; "
                       "export the run again") from None


def make_manifest(model_name, version, description=None):
    """The MANIFEST.json text, made by model-archiver's own classes (its CLI cannot set a version)."""
    from model_archiver.manifest_components.manifest import Manifest
    from model_archiver.manifest_components.model import Model

    model = Model(model_name=model_name, handler=HANDLER, description=description, model_version=str(version))
    return str(Manifest(runtime="python3", model=model, description=description))


def package_run(run_dir, out_path, version="1.0", model_name=None, detector=None, limits=None):
    """Build a model archive of a training run.

    Parameters
    ----------
    run_dir : str or Path
        A training run folder with ``config.json`` and the exported
        ``model-symbol.json`` + ``model-0000.params``.
    out_path : str or Path
        The ``.mar`` file to write (its folder is created; an existing file is replaced).
    version : str
        Model version recorded in the manifest and in ``serving.json``.
    model_name : str, optional
        Name in the manifest; default the file name without ``.mar``
        (the name used in ``--models NAME=FILE.mar`` may differ).
    detector, limits : dict, optional
        Override :data:`~ferlib.serving.faces.DEFAULT_DETECTOR` and
        :data:`~ferlib.serving.handler.DEFAULT_LIMITS` in ``serving.json``.

    Returns
    -------
    Path of the archive.
    """
    try:
        from model_archiver.model_packaging_utils import ModelExportUtils
    except ImportError:
        raise FERError("model-archiver is not installed: pip install -e '.[serve]'") from None
    out_path = Path(out_path)
    if out_path.suffix != ".mar":
        raise FERError(f"{out_path}: the archive name must end in .mar")
    model_name = model_name or out_path.stem
    if not _MODEL_NAME.match(model_name):
        raise FERError(f"model name {model_name!r}: use letters, digits, '_', '-' and '.', starting with a "
                       "letter or digit")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    description = "Facial emotion recognition (FER+, 8 emotions) on every face of a photo"
    with tempfile.TemporaryDirectory(prefix=".package-", dir=out_path.parent) as tmp:
        stage = Path(tmp) / "stage"
        settings = stage_archive(run_dir, stage, version, detector, limits)
        manifest = make_manifest(model_name, version, description)
        build_dir = Path(tmp) / "out"
        build_dir.mkdir()
        # model-archiver's packaging step (the one its CLI runs), into a scratch folder...
        ModelExportUtils.archive(str(build_dir), model_name, str(stage), set(), manifest, "default")
        built = build_dir / f"{model_name}.mar"
        # ...then moved into place at once, so a served model store never sees half an archive.
        os.replace(built, out_path)
    print(f"wrote {out_path} ({out_path.stat().st_size / 1e6:.1f} MB): model {model_name!r} version {version}, "
          f"input {settings['input_size']}px, from {run_dir}")
    return out_path


def read_archive(mar_path):
    """``(manifest dict, serving.json dict, list of (name, size))`` of a ``.mar`` file."""
    mar_path = Path(mar_path)
    if not mar_path.is_file():
        raise FERError(f"{mar_path} does not exist")
    try:
        with zipfile.ZipFile(mar_path) as z:
            manifest = json.loads(z.read("MAR-INF/MANIFEST.json"))
            settings = json.loads(z.read(run.SERVING))
            files = [(info.filename, info.file_size) for info in z.infolist()]
    except (zipfile.BadZipFile, KeyError, ValueError) as err:
        raise FERError(f"{mar_path} is not a model archive made by ferlib: {err}") from None
    return manifest, settings, files
