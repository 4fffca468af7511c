"""The main job behind ``make demo``: the whole pipeline, end to end.

Uses the real FER+ files when ``fer2013.csv`` (or ``.csv.gz`` / Kaggle's
``fer2013.tar.gz``) and ``fer2013new.csv`` are in the data folder, otherwise
the built-in synthetic set, which it generates first.
"""
import io
from pathlib import Path

from . import data as fer_data
from . import run, synth
from .photos import SAMPLE_PHOTOS, sample_photos

FER_NAMES = ("fer2013.csv", "fer2013.csv.gz", "fer2013.tar.gz")
FERPLUS_NAME = "fer2013new.csv"


def find_real_files(folder):
    """``(fer_path, ferplus_path)`` when both real files are in ``folder``, else ``None``."""
    folder = Path(folder)
    ferplus = folder / FERPLUS_NAME
    for name in FER_NAMES:
        if (folder / name).is_file() and ferplus.is_file():
            return folder / name, ferplus
    return None


def prepare_inputs(data_dir, out_dir, synthetic_faces=4000, seed=0):
    """Prepare the cache in ``out_dir/cache`` from real files if present, else synthetic ones.

    Returns ``(cache_dir, data, is_real)``.
    """
    out_dir = Path(out_dir)
    real = find_real_files(data_dir)
    if real:
        fer_path, ferplus_path = real
        print(f"real FER+ files found in {data_dir}: {fer_path.name}, {ferplus_path.name}")
    else:
        print(f"no fer2013.csv + fer2013new.csv in {data_dir}: using the built-in synthetic set "
              f"({synthetic_faces} faces, seed {seed})")
        fer_path, ferplus_path = synth.write_synthetic(out_dir / "synthetic", n=synthetic_faces, seed=seed)
    cache_dir = out_dir / ("cache-real" if real else "cache-synthetic")
    data = fer_data.prepare(fer_path, ferplus_path, cache_dir)
    return cache_dir, data, bool(real)


def prepared_data(data_dir, out_dir, synthetic_faces=4000, seed=0, synthetic=False):
    """:func:`prepare_inputs` once: the real cache when the files are in ``data_dir`` (unless
    ``synthetic``), else the synthetic set's, each in its own folder of ``out_dir``, loaded again
    when it is already there. Returns ``(cache_dir, data, is_real)``."""
    out_dir = Path(out_dir)
    real = None if synthetic else find_real_files(data_dir)
    folder = out_dir / ("real" if real else f"synthetic-{synthetic_faces}-seed{seed}")
    cache = folder / ("cache-real" if real else "cache-synthetic")
    if fer_data.is_cache(cache):
        return cache, fer_data.load_cache(cache), bool(real)
    return prepare_inputs(data_dir if real else folder / "no-real-data", folder, synthetic_faces, seed)


def notebook_parameters(notebook, run_dir, cache_dir, quick=True, extra=None, serve_run=True):
    """The papermill parameters that point ``notebook`` at a trained run and its cache.

    Only notebooks that declare ``RUN_DIR`` get the run: evaluation (which also declares
    ``DATA_DIR``) with its cache (in notebooks 01-03 ``DATA_DIR`` is the raw data folder, which
    they find by themselves), serving only when ``serve_run`` (a run of the real data; else it
    serves ferlib's pretrained network). Paths are absolute because the notebooks run from
    their own folder. ``extra`` parameters go to the notebooks that declare them.
    """
    import papermill

    parameters = {"QUICK": bool(quick)}
    declared = papermill.inspect_notebook(str(notebook))
    if "RUN_DIR" in declared and ("DATA_DIR" in declared or serve_run):
        parameters["RUN_DIR"] = str(Path(run_dir).resolve())
        if "DATA_DIR" in declared:
            parameters["DATA_DIR"] = str(Path(cache_dir).resolve())
    parameters.update({name: value for name, value in (extra or {}).items() if name in declared})
    return parameters


def run_notebooks(notebook_dir, out_dir, run_dir, cache_dir, quick=True, extra=None, serve_run=True):
    """Execute the numbered tutorial notebooks into ``out_dir``, the one that evaluates on
    ``run_dir`` (the demo's own run) rather than on a 2-epoch quick one, and the one that serves
    on it too when ``serve_run`` (see :func:`notebook_parameters`).

    Returns the list of executed notebooks. Raises :class:`papermill.PapermillExecutionError`
    (naming the notebook and cell) when one fails.
    """
    notebook_dir, out_dir = Path(notebook_dir), Path(out_dir)
    notebooks = sorted(notebook_dir.glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        raise FileNotFoundError(f"{notebook_dir}: no numbered notebooks (NN_name.ipynb) to execute")
    for notebook in notebooks:
        parameters = notebook_parameters(notebook, run_dir, cache_dir, quick, extra, serve_run)
        print(f"executing {notebook.name} -> {out_dir / notebook.name} with {parameters}", flush=True)
        execute_notebook(notebook, out_dir, parameters)
    return notebooks


def execute_notebook(notebook, out_dir, parameters):
    """Execute ``notebook`` headless with papermill from its own folder (as a reader runs it),
    writing the executed copy to ``out_dir``; a failing cell raises with its traceback."""
    import papermill

    notebook, out_dir = Path(notebook), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return papermill.execute_notebook(str(notebook), str(out_dir / notebook.name), parameters=parameters,
                                      cwd=str(notebook.parent), kernel_name="python3", progress_bar=False)


def run_demo(data_dir="data", out_dir="build/demo", synthetic_faces=4000, seed=0, runs_dir="runs",
             model_store="model_store", photo=None, num_epochs=None, notebook_dir=None,
             notebook_out="build/notebooks", notebook_extra=None):
    """Prepare, train, evaluate, package and serve: the whole tutorial in one call.

    On the synthetic set the small CPU variant trains in minutes; with the real
    files in ``data_dir`` it runs the README's ``cpu`` recipe (about 70 minutes on 2 cores in float32).
    Without the real files, the network that ships with ferlib (``"pretrained"``) is then served
    and answers the real sample photos of :mod:`ferlib.photos`, drawn into ``out_dir``.
    With ``notebook_dir``, the tutorial notebooks are then executed (quick parameters, and
    ``notebook_extra`` where a notebook declares them) into ``notebook_out``: notebook 04
    (evaluation) on this run, and notebook 05 (serving) too when it is a run of the real data.
    """
    from . import evaluate, train

    out_dir = Path(out_dir)
    cache_dir, data, is_real = prepare_inputs(data_dir, out_dir, synthetic_faces, seed)
    print(f"\nprepared {'real FER+' if is_real else 'synthetic'} data in {cache_dir}: {data!r}\n")
    print(fer_data.format_summary(data.summary()))

    recipe = train.get_recipe("cpu" if is_real else "synthetic", **({"num_epochs": num_epochs} if num_epochs else {}))
    run_dir = Path(runs_dir) / ("demo-real" if is_real else "demo-synthetic")
    print(f"\n== training {recipe.model} ({recipe.num_epochs} epochs, crossentropy) into {run_dir}")
    result = train.train(cache_dir, run_dir, recipe, mode="crossentropy", seed=seed, overwrite=True)
    print(f"best validation accuracy {result['best_val_acc']:.2%} at epoch {result['best_epoch']}")

    print(f"\n== evaluating {run_dir} on the test split (plain and test-time augmentation)")
    metrics = evaluate.evaluate_run(run_dir, cache_dir, split="test", tta=True)
    print(evaluate.format_result(metrics))

    print(f"\n== packaging {run_dir} into {model_store}/fer.mar and serving it")
    serve_demo(run_dir, model_store, photos={str(photo): photo} if photo else None, draw_dir=out_dir)
    if not is_real:
        print(f"\n== the pretrained network (ferlib's own, trained on the real FER+ data) on real photos "
              f"({', '.join(f'{name} from {package}' for name, package in SAMPLE_PHOTOS.items())}), "
              f"served from {model_store}/fer.mar")
        serve_demo(run.PRETRAINED, model_store, photos=sample_photos(), draw_dir=out_dir)

    if notebook_dir:
        print(f"\n== executing the notebooks of {notebook_dir} into {notebook_out}")
        run_notebooks(notebook_dir, notebook_out, run_dir, cache_dir, quick=True, extra=notebook_extra,
                      serve_run=is_real)
    return 0


def serve_demo(run_dir, model_store="model_store", photos=None, draw_dir=None, version="1.0"):
    """Build ``model_store/fer.mar`` from ``run_dir``, serve it, ask it about photos, stop it.

    Parameters
    ----------
    run_dir : str or Path
        A training run folder, or ``"pretrained"``.
    model_store : str or Path
        Where the archive goes (``fer.mar``).
    photos : dict, optional
        ``{name: path or encoded bytes}`` of photos to send (faces are detected). Default: a
        synthetic test face, sent with the whole-image option.
    draw_dir : str or Path, optional
        Write each photo with the answer drawn on it here, as ``answer_<name>.png``.

    Returns
    -------
    dict
        The server's answers, by photo name.
    """
    from .errors import FERError
    from .serving import ModelServer, draw_faces, format_answer, package_run, predict_url
    from .serving.server import port_is_free

    mar = package_run(run_dir, Path(model_store) / "fer.mar", version=version)
    if photos:
        bodies = {name: photo if isinstance(photo, bytes) else Path(photo).read_bytes()
                  for name, photo in photos.items()}
        whole_image = False
    else:
        from PIL import Image

        from .synth import make_faces

        buffer = io.BytesIO()
        Image.fromarray(make_faces(1, seed=1).images[0]).save(buffer, format="PNG")
        bodies, whole_image = {"a synthetic 48x48 face (whole-image option)": buffer.getvalue()}, True
    # The configured port if it is free, else a free one (another server may be running).
    server = ModelServer(mar.parent, models={"fer": mar.name},
                         inference_port=None if port_is_free(8080) else "free")
    print(f"starting multi-model-server on {server.inference_url} ...", flush=True)
    with server:
        replies = dict(zip(bodies, predict_url(list(bodies.values()), server.inference_url, "fer", whole_image)))
    print("server stopped")
    answers = {}
    for name, (status, answer) in replies.items():
        print(format_answer(name, status, answer))
        if status != 200:
            raise FERError(f"the server answered {status} for {name}: {answer.get('message', answer)}")
        if draw_dir is not None:
            out = Path(draw_dir) / f"answer_{Path(name).stem if photos else 'synthetic'}.png"
            draw_faces(bodies[name], answer["faces"], out)
            print(f"  drew {out}")
        answers[name] = answer
    return answers


def add_commands(subparsers):
    p = subparsers.add_parser("demo", help="run the whole pipeline (what `make demo` does)",
                              description="Prepare the data (real FER+ if in --data, else synthetic), train, "
                                          "evaluate, package model_store/fer.mar, serve it and answer one image; "
                                          "without real data, then serve ferlib's pretrained network and answer "
                                          "real photos.")
    p.add_argument("--data", default="data", help="folder that may hold the real fer2013.csv + fer2013new.csv")
    p.add_argument("--out", default="build/demo", help="output folder (data cache, answer_*.png)")
    p.add_argument("--runs", default="runs", help="folder of the training run")
    p.add_argument("--model-store", default="model_store", help="where fer.mar goes")
    p.add_argument("--photo", default=None, help="a photo to send to the server (default: a synthetic face crop)")
    p.add_argument("--epochs", type=int, default=None, help="override the recipe's number of epochs")
    p.add_argument("--synthetic-faces", type=int, default=4000, help="size of the synthetic set when no real data")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--notebooks", default=None, metavar="DIR",
                   help="then execute the numbered notebooks of DIR on this run (quick parameters)")
    p.add_argument("--notebooks-out", default="build/notebooks", help="where the executed notebooks go")
    p.set_defaults(func=lambda a: run_demo(a.data, a.out, a.synthetic_faces, a.seed, a.runs, a.model_store,
                                           a.photo, a.epochs, a.notebooks, a.notebooks_out))
