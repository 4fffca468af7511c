"""Serving: the model archive, the Multi Model Server handler, the client.

::

    python -m ferlib package --run runs/NAME --out model_store/fer.mar
    multi-model-server --start --model-store model_store --models fer=fer.mar --mms-config config.properties
    python -m ferlib predict photo.jpg --url http://127.0.0.1:8080/predictions/fer [--draw out.png]
    python -m ferlib predict photo.jpg         # no server: ferlib's pretrained network (or --run runs/NAME)
    multi-model-server --stop

* :mod:`.archive` -- :func:`package_run` builds the ``.mar`` (network, labels,
  settings, handler and the ferlib code it needs);
* :mod:`.handler` -- the MMS entry point and :class:`FacePredictor`, the same
  logic without a server;
* :mod:`.faces` -- face detection (YuNet, or OpenCV's Haar cascade) and FER-style crops;
* :mod:`.client` -- :func:`predict_url`, :func:`predict_local`, :func:`draw_faces`;
* :mod:`.server` -- :class:`ModelServer`: start and stop a server from Python (notebook, tests, bench);
* :mod:`.front` -- :class:`FrontDoor`: answers in JSON what multi-model-server answers badly;
  ``python -m ferlib serve`` runs both;
"""
from .archive import package_run, read_archive
from .client import draw_faces, format_answer, predict_local, predict_url
from .faces import FaceDetector
from .front import FrontDoor
from .handler import FacePredictor, RequestError, decode_image
from .server import ModelServer

__all__ = ["package_run", "read_archive", "FacePredictor", "FaceDetector", "FrontDoor", "RequestError", "decode_image",
           "predict_url", "predict_local", "draw_faces", "format_answer", "ModelServer", "add_commands"]


def _serve_command(args):
    from .front import serve

    serve(args.model_store, args.mar, args.name, args.batch_size, args.max_batch_delay, args.workers,
          args.host, args.port, read_timeout=args.read_timeout)
    return 0


def _package_command(args):
    package_run(args.run, args.out, version=args.version, model_name=args.model_name)
    return 0


def add_commands(subparsers):
    """The ``package``, ``predict`` and ``serve`` verbs of ``python -m ferlib``."""
    from . import client

    p = subparsers.add_parser(
        "package", help="build the model archive (.mar) of a training run for multi-model-server",
        description="Package a run folder's exported network with its labels, serving settings, handler and "
                    "the ferlib code the handler needs into a .mar that multi-model-server serves.")
    p.add_argument("--run", required=True, help="training run folder (with model-symbol.json, model-0000.params)")
    p.add_argument("--out", default="model_store/fer.mar", help="archive to write")
    p.add_argument("--version", default="1.0", help="model version recorded in the manifest")
    p.add_argument("--model-name", default=None, help="model name in the manifest (default: the file name)")
    p.set_defaults(func=_package_command)
    client.add_commands(subparsers)

    p = subparsers.add_parser(
        "serve", help="serve a model archive: multi-model-server, behind ferlib's front door",
        description="Start multi-model-server on a private loopback port, register the archive once, "
                    "and answer on --host:--port through a front door that answers bad requests "
                    "(wrong method, too large, too slow, form-encoded) in JSON. Ctrl-C stops both.")
    p.add_argument("--model-store", default="model_store", help="folder of the .mar files")
    p.add_argument("--mar", default="fer.mar", help="the archive to serve, in the model store")
    p.add_argument("--name", default="fer", help="model name: POST images to /predictions/NAME")
    p.add_argument("--batch-size", type=int, default=None,
                   help="requests that share one forward pass (default: 1; a batch goes to one worker, "
                        "so larger batches pay off only for crops under heavy load)")
    p.add_argument("--max-batch-delay", type=int, default=50, help="ms to wait for a batch to fill")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes, each one OpenMP thread (default: one per core, at most 4)")
    p.add_argument("--host", default="127.0.0.1", help="address to answer on (0.0.0.0: other machines too)")
    p.add_argument("--port", type=int, default=8080, help="port to answer on")
    p.add_argument("--read-timeout", type=float, default=30.0, help="seconds a client may take to send a request")
    p.set_defaults(func=_serve_command)
