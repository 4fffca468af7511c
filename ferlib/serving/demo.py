"""The serving end of ``make demo``: package a run, start the server, answer one image, stop."""
import io
from pathlib import Path

from ..errors import FERError
from .archive import package_run
from .client import draw_faces, format_answer, predict_url
from .server import ModelServer, port_is_free


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
    mar = package_run(run_dir, Path(model_store) / "fer.mar", version=version)
    if image is not None:
        body, whole_image, name = Path(image).read_bytes(), False, str(image)
    else:
        from PIL import Image

        from ..synth import make_faces

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
