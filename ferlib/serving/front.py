"""A front door for multi-model-server's inference API: the HTTP answers MMS 1.1.11 gets wrong.

Sent straight to multi-model-server 1.1.11, some requests get answers no client can act on:

* a wrong method (``GET /predictions/fer``) reaches the handler as an empty body: 400 "empty body";
* an upload over ``max_request_size``: 413 with an empty body;
* a raw image sent as ``application/x-www-form-urlencoded`` (what a bare ``curl -d @photo.jpg``
  and HTML forms send): 500 from the front end's form decoder;
* an upload that stops half-way: the connection is held open for ever.

:class:`FrontDoor` listens where clients connect, answers those cases itself with a JSON
``{"code", "type", "message"}`` (405, 413, 408, 411, 404), passes the body on to multi-model-server
as ``application/octet-stream`` (multipart forms unchanged), and returns the answer with its
``Content-Type`` (which the handler cannot set: see ``handler.pad_for_mms_frame``). When the model
server is down it answers 502 in words. ``python -m ferlib serve`` runs both.

Given ``pages`` (``{path: (content_type, body, headers)}``), it also answers ``GET`` of those paths
itself: ``python -m ferlib web`` serves its page that way, so the page and the predictions it asks for
share one origin and multi-model-server needs no CORS settings (see :mod:`ferlib.web`).
"""
import http.client
import json
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from ..errors import FERError

#: Whole-request limits of the front door: the archive's own limits apply after it.
DEFAULT_MAX_BODY = 20 * 1024 * 1024   # config.properties' max_request_size
DEFAULT_READ_TIMEOUT = 30.0           # seconds a client may take to send its request
#: Request headers passed on to the model server.
FORWARDED_HEADERS = ("X-Whole-Image",)
PREDICTION_PATHS = ("/predictions/", "/invocations")


def error_body(code, kind, message):
    return json.dumps({"code": code, "type": kind, "message": message}).encode("utf-8")


class _Handler(BaseHTTPRequestHandler):
    server_version = "ferlib-front"
    protocol_version = "HTTP/1.1"

    # -- answers ------------------------------------------------------------------------------------

    def _send(self, code, body, content_type="application/json", extra=None, close=False):
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, code, kind, message, **kwargs):
        self._send(code, error_body(code, kind, message), **kwargs)

    def log_message(self, format, *args):  # noqa: A002  (BaseHTTPRequestHandler's signature)
        if self.server.verbose:
            super().log_message(format, *args)

    def setup(self):
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self):
        try:
            super().finish()
        finally:
            with self.server.connections_lock:
                self.server.connections.discard(self.connection)

    # -- routes -------------------------------------------------------------------------------------

    def _is_prediction(self):
        path = urlsplit(self.path).path
        return path.startswith(PREDICTION_PATHS[0]) or path == PREDICTION_PATHS[1]

    def do_GET(self):
        path = urlsplit(self.path).path
        page = self.server.pages.get(path)
        if page is not None:
            content_type, body, headers = page
            return self._send(200, body, content_type, extra=headers)
        if path == "/ping":
            return self._forward(b"", None)
        if self._is_prediction():
            return self._error(405, "MethodNotAllowed", f"{self.command} {path}: send the image with POST",
                               extra={"Allow": "POST"})
        return self._error(404, "NotFound", f"no {path} here: POST images to /predictions/<model>")

    def do_POST(self):
        path = urlsplit(self.path).path
        if not self._is_prediction():
            return self._error(404, "NotFound", f"no {path} here: POST images to /predictions/<model>",
                               close=True)
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked" or length is None:
            return self._error(411, "LengthRequired", "send the image with a Content-Length header", close=True)
        try:
            length = int(length)
        except ValueError:
            return self._error(400, "BadRequest", f"Content-Length {length[:20]!r} is not a number", close=True)
        if length > self.server.max_body:
            return self._error(413, "RequestTooLarge", f"the request of {length:,} bytes is larger than the "
                               f"limit of {self.server.max_body:,}", close=True)
        try:
            body = self.rfile.read(length)
        except (socket.timeout, TimeoutError):
            body = None
        if body is None or len(body) < length:
            return self._error(408, "RequestTimeout", f"the request body stopped after "
                               f"{0 if body is None else len(body):,} of {length:,} bytes", close=True)
        content_type = self.headers.get("Content-Type", "")
        # Multipart forms are what MMS decodes well; anything else goes as raw bytes.
        forward_type = content_type if content_type.lower().startswith("multipart/") else "application/octet-stream"
        self._forward(body, forward_type)

    def _method_not_allowed(self):
        self._error(405, "MethodNotAllowed", f"{self.command} is not served here: POST images to "
                    "/predictions/<model>", extra={"Allow": "GET, POST"}, close=True)

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _method_not_allowed

    # -- the model server ---------------------------------------------------------------------------

    def _forward(self, body, content_type):
        headers = {name: self.headers[name] for name in FORWARDED_HEADERS if self.headers.get(name) is not None}
        if content_type:
            headers["Content-Type"] = content_type
        target = urlsplit(self.server.backend)
        connection = http.client.HTTPConnection(target.hostname, target.port, timeout=self.server.backend_timeout)
        try:
            connection.request(self.command, self.path, body=body if self.command == "POST" else None,
                               headers=headers)
            reply = connection.getresponse()
            data = reply.read()
        except (OSError, http.client.HTTPException) as err:
            return self._error(502, "ModelServerUnavailable", f"the model server at {self.server.backend} is not "
                               f"answering ({type(err).__name__}): is it running?")
        finally:
            connection.close()
        if reply.status >= 400 and not data.strip():  # MMS's own errors can be bodiless
            data = error_body(reply.status, reply.reason.replace(" ", ""), f"the model server answered "
                              f"{reply.status} {reply.reason}")
        self._send(reply.status, data.rstrip() or b"{}")


class FrontDoor(ThreadingHTTPServer):
    """The front door, serving in a background thread: ``with FrontDoor(backend_url) as front: ...``.

    Parameters
    ----------
    backend : str
        The model server's inference API, e.g. ``http://127.0.0.1:8080``.
    host, port : str, int
        Where clients connect (port 0: any free one; see :attr:`url`).
    max_body : int
        Largest request body, in bytes.
    read_timeout : float
        Seconds a client may take to send a request before it is answered 408.
    pages : dict, optional
        ``{path: (content_type, body bytes, {header: value})}`` answered to ``GET path`` (a web page).
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, backend, host="127.0.0.1", port=0, max_body=DEFAULT_MAX_BODY,
                 read_timeout=DEFAULT_READ_TIMEOUT, backend_timeout=300, verbose=False, pages=None):
        self.backend = backend.rstrip("/")
        self.pages = dict(pages or {})
        # Open client connections: stop() closes them, so that no kept-alive one is served afterwards.
        self.connections, self.connections_lock = set(), threading.Lock()
        self.max_body, self.backend_timeout, self.verbose = int(max_body), backend_timeout, verbose
        handler = type("FrontHandler", (_Handler,), {"timeout": read_timeout})
        try:
            super().__init__((host, int(port)), handler)
        except OSError as err:
            raise FERError(f"cannot listen on {host}:{port} ({err.strerror})") from None
        self._thread = None

    def handle_error(self, request, client_address):
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # the client went away (a closed page, a stopped webcam): nothing to answer
        super().handle_error(request, client_address)

    @property
    def url(self):
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def start(self):
        self._thread = threading.Thread(target=self.serve_forever, name="ferlib-front", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self.shutdown()
        self.server_close()
        with self.connections_lock:
            connections = list(self.connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def serve(model_store, mar="fer.mar", name="fer", batch_size=None, max_batch_delay=50, workers=None,
          host="127.0.0.1", port=8080, max_body=DEFAULT_MAX_BODY, read_timeout=DEFAULT_READ_TIMEOUT,
          ready=None, stop=None):
    """``python -m ferlib serve``: multi-model-server on a private loopback port, the archive
    registered once, and the front door on ``host:port``; until ``stop`` is set
    (a :class:`threading.Event`) or Ctrl-C. ``ready(front_url)`` is called once all is up.
    ``workers``: default :data:`~ferlib.serving.server.DEFAULT_WORKERS`, one per core; ``batch_size``:
    default :data:`~ferlib.serving.server.DEFAULT_BATCH_SIZE`."""
    from .server import DEFAULT_BATCH_SIZE, DEFAULT_WORKERS, ModelServer

    workers = workers or DEFAULT_WORKERS
    batch_size = batch_size or DEFAULT_BATCH_SIZE

    with ModelServer(model_store, inference_port="free") as server:
        server.register(mar, name=name, batch_size=batch_size, max_batch_delay=max_batch_delay,
                        initial_workers=workers)
        with FrontDoor(server.inference_url, host, port, max_body, read_timeout) as front:
            batching = "requests one at a time" if batch_size == 1 else f"batches of up to {batch_size}"
            run_until_stopped(front.url, ready, stop, f"serving {mar} as {front.url}/predictions/{name} ({batching}, "
                              f"{workers} worker{'s' * (workers != 1)}); Ctrl-C stops")
    print("stopped", flush=True)


def run_until_stopped(url, ready=None, stop=None, message=""):
    """Print ``message``, call ``ready(url)``, then wait until ``stop`` (a :class:`threading.Event`) is set
    or Ctrl-C. The message is printed inside the wait's Ctrl-C handling: a user (or a test) who reacts to it
    at once must not meet the moment before the wait begins."""
    try:
        if message:
            print(message, flush=True)
        if ready:
            ready(url)
        (stop or threading.Event()).wait()
    except KeyboardInterrupt:
        pass
