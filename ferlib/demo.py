"""The main job behind ``make demo``: the whole pipeline, end to end.

Uses the real FER+ files when ``fer2013.csv`` (or ``.csv.gz`` / Kaggle's
``fer2013.tar.gz``) and ``fer2013new.csv`` are in the data folder, otherwise
the built-in synthetic set, which it generates first.
"""
import io
from pathlib import Path

from . import data as fer_data
from . import synth

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


def notebook_parameters(notebook, run_dir, cache_dir, quick=True, extra=None):
    """The papermill parameters that point ``notebook`` at a trained run and its cache.

    Only notebooks that declare ``RUN_DIR`` (evaluation, serving) get the run, and its
    cache as ``DATA_DIR`` (in notebooks 01-02 ``DATA_DIR`` is the raw data folder, which
    they find by themselves). Paths are absolute because the notebooks run from their
    own folder. ``extra`` parameters go to the notebooks that declare them.
    """
    import papermill

    parameters = {"QUICK": bool(quick)}
    declared = papermill.inspect_notebook(str(notebook))
    if "RUN_DIR" in declared:
        parameters["RUN_DIR"] = str(Path(run_dir).resolve())
        if "DATA_DIR" in declared:
            parameters["DATA_DIR"] = str(Path(cache_dir).resolve())
    parameters.update({name: value for name, value in (extra or {}).items() if name in declared})
    return parameters


def run_notebooks(notebook_dir, out_dir, run_dir, cache_dir, quick=True, extra=None):
    """Execute the numbered tutorial notebooks into ``out_dir``, those that evaluate or
    serve a model on ``run_dir`` (the demo's own run) rather than on a 2-epoch quick one.

    Returns the list of executed notebooks. Raises :class:`papermill.PapermillExecutionError`
    (naming the notebook and cell) when one fails.
    """
    notebook_dir, out_dir = Path(notebook_dir), Path(out_dir)
    notebooks = sorted(notebook_dir.glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        raise FileNotFoundError(f"{notebook_dir}: no numbered notebooks (NN_name.ipynb) to execute")
    for notebook in notebooks:
        parameters = notebook_parameters(notebook, run_dir, cache_dir, quick, extra)
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
    files in ``data_dir`` it runs the README's CPU recipe (about 40 minutes on 2 cores).
    With ``notebook_dir``, the tutorial notebooks are then executed (quick parameters, and
    ``notebook_extra`` where a notebook declares them) into ``notebook_out``, notebooks 03
    and 04 on this run.
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
    serve_demo(run_dir, model_store, image=photo, draw=out_dir / "answer.png")

    if notebook_dir:
        print(f"\n== executing the notebooks of {notebook_dir} into {notebook_out}")
        run_notebooks(notebook_dir, notebook_out, run_dir, cache_dir, quick=True, extra=notebook_extra)
    return 0


def serve_demo(run_dir, model_store="model_store", image=None, draw=None, version="1.0"):
    """Build ``model_store/fer.mar`` from ``run_dir``, serve it, ask it about one image, stop it.

    Parameters
    ----------
    run_dir : str or Path
        A training run folder.
    model_store : str or Path
        Where the archive goes (``fer.mar``).
    image : str or Path, optional
        A photo to send (faces are detected). Default: a synthetic test face
        sent with the whole-image option, since the project ships no photographs.
    draw : str or Path, optional
        Write the image with the answer drawn on it here.

    Returns
    -------
    dict
        The server's answer.
    """
    from .errors import FERError
    from .serving import ModelServer, draw_faces, format_answer, package_run, predict_url
    from .serving.server import port_is_free

    mar = package_run(run_dir, Path(model_store) / "fer.mar", version=version)
    if image is not None:
        body, whole_image, name = Path(image).read_bytes(), False, str(image)
    else:
        from PIL import Image

        from .synth import make_faces

        buffer = io.BytesIO()
        Image.fromarray(make_faces(1, seed=1).images[0]).save(buffer, format="PNG")
        body, whole_image, name = buffer.getvalue(), True, "a synthetic 48x48 face (whole-image option)"
    # The configured port if it is free, else a free one (another server may be running).
    server = ModelServer(mar.parent, models={"fer": mar.name},
                         inference_port=None if port_is_free(8080) else "free")
    print(f"starting multi-model-server on {server.inference_url} ...", flush=True)
    with server:
        [(status, answer)] = predict_url([body], server.inference_url, "fer", whole_image)
        print(format_answer(name, status, answer))
    print("server stopped")
    if status != 200:
        raise FERError(f"the server answered {status}: {answer.get('message', answer)}")
    if draw:
        draw_faces(body, answer["faces"], draw)
        print(f"drew {draw}")
    return answer


def add_commands(subparsers):
    p = subparsers.add_parser("demo", help="run the whole pipeline (what `make demo` does)",
                              description="Prepare the data (real FER+ if in --data, else synthetic), train, "
                                          "evaluate, package model_store/fer.mar, serve it and answer one image.")
    p.add_argument("--data", default="data", help="folder that may hold the real fer2013.csv + fer2013new.csv")
    p.add_argument("--out", default="build/demo", help="output folder (data cache, answer.png)")
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
