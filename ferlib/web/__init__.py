"""``python -m ferlib web``: a web page for the model server. Drop a photo or turn on the webcam.

::

    python -m ferlib serve                  # the model server, on http://127.0.0.1:8080
    python -m ferlib web                    # the page, on http://127.0.0.1:8000

The page (``index.html``, ``app.js``, ``style.css`` in this folder, shipped as package data: no CDN,
no build step) is served by a :class:`~ferlib.serving.front.FrontDoor` that also forwards the page's
``POST /predictions/<model>`` and ``GET /ping`` to the model server. Page and predictions share one
origin, so multi-model-server needs no CORS settings: its inference API stays on loopback and its
management API is never forwarded (only ``/predictions/``, ``/invocations`` and ``/ping`` are).

* :func:`page_files` -- the page's files and its ``settings.json`` (model name, upload limit);
* :func:`web_door` -- the front door with the page, not started (``with web_door(url) as door``);
* :func:`serve_web` -- ``python -m ferlib web``: until Ctrl-C;
* :mod:`.browser` -- headless Chromium for screenshots and the browser tests.
"""
import ipaddress
import json
from importlib import resources
from urllib.parse import urlsplit

from ..errors import FERError
from ..serving.front import DEFAULT_MAX_BODY, FrontDoor, run_until_stopped

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_MODEL = "fer"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000

#: URL path -> (file in this package, content type).
PAGE_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}
#: Everything the page loads comes from its own server; photos and webcam frames stay blobs.
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob: mediastream:; "
                           "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
PAGE_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": CONTENT_SECURITY_POLICY, "Referrer-Policy": "no-referrer"}


def check_backend(url):
    """``url`` if it is a model server's address (``http://host:port``), else a FERError that says why."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise FERError(f"--url {url!r}: give the model server's inference address, like {DEFAULT_URL}")
    try:
        parts.port
    except ValueError:
        raise FERError(f"--url {url!r}: the port is not a number") from None
    return url.rstrip("/")


def is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def page_files(model=DEFAULT_MODEL, backend=DEFAULT_URL, max_body=DEFAULT_MAX_BODY):
    """The page's files for :class:`FrontDoor`'s ``pages``: ``{path: (content_type, bytes, headers)}``.

    ``/settings.json`` tells the page the model name, the model server's address (for its messages)
    and the upload limit.
    """
    from ..labels import EMOTIONS

    here = resources.files(__name__)
    pages = {path: (content_type, here.joinpath(name).read_bytes(), PAGE_HEADERS)
             for path, (name, content_type) in PAGE_FILES.items()}
    settings = {"model": model, "backend": backend, "max_bytes": int(max_body), "emotions": list(EMOTIONS)}
    pages["/settings.json"] = ("application/json", json.dumps(settings).encode("utf-8"), PAGE_HEADERS)
    return pages


def web_door(url=DEFAULT_URL, model=DEFAULT_MODEL, host=DEFAULT_HOST, port=DEFAULT_PORT, max_body=DEFAULT_MAX_BODY,
             verbose=False):
    """The page and its proxy to the model server at ``url``: a :class:`FrontDoor`, not started yet.

    ``port=0`` takes any free port (see ``door.url``)."""
    url = check_backend(url)
    if not model or "/" in model or "?" in model:
        raise FERError(f"--model {model!r}: give the served model's name, like {DEFAULT_MODEL}")
    return FrontDoor(url, host, port, max_body=max_body, verbose=verbose, pages=page_files(model, url, max_body))


def serve_web(url=DEFAULT_URL, model=DEFAULT_MODEL, host=DEFAULT_HOST, port=DEFAULT_PORT, ready=None, stop=None,
              verbose=False):
    """``python -m ferlib web``: serve the page until ``stop`` (a :class:`threading.Event`) is set or Ctrl-C."""
    with web_door(url, model, host, port, verbose=verbose) as door:
        shown = door.url.replace("://0.0.0.0:", "://127.0.0.1:")
        message = (f"the web page: open {shown}/ (it asks the model server at {url} about model {model!r}); "
                   "Ctrl-C stops")
        if not is_loopback(host):
            message += (f"\nwarning: answering other machines on {host}: anyone who reaches this port can send images "
                        "to the model (the model server's management API stays out of reach). Browsers give "
                        "the webcam only to https pages or to this machine's own address.")
        run_until_stopped(door.url, ready, stop, message)
    print("stopped", flush=True)


def _web_command(args):
    serve_web(args.url, args.model, args.host, args.port, verbose=args.verbose)
    return 0


def add_commands(subparsers):
    """The ``web`` verb of ``python -m ferlib``."""
    p = subparsers.add_parser(
        "web", help="a web page for the model server: drop a photo or turn on the webcam",
        description="Serve a web page that sends photos, or webcam frames, to a running model server "
                    "(python -m ferlib serve) and draws every face's emotions. The page's own server forwards "
                    "its predictions to --url, so the model server needs no CORS settings; only predictions "
                    "and /ping are forwarded, never the management API.")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port of the page")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help="address to answer on (default this machine only; 0.0.0.0: other machines too)")
    p.add_argument("--url", default=DEFAULT_URL, help="the model server's inference address")
    p.add_argument("--model", default=DEFAULT_MODEL, help="the served model's name")
    p.add_argument("--verbose", action="store_true", help="log every request")
    p.set_defaults(func=_web_command)


__all__ = ["page_files", "web_door", "serve_web", "check_backend", "add_commands", "DEFAULT_URL", "DEFAULT_PORT"]
