"""Start and stop a Multi Model Server from Python (notebook 05, the tests, ``make demo``).

:class:`ModelServer` runs ``multi-model-server --start --foreground`` in a
working folder of its own: MMS writes ``logs/`` (and the metrics log) under
its current folder, keeps its pid file in the temporary folder and the
sockets of its workers in Java's temporary folder, so one private folder per
server keeps two servers (or a test and a notebook) from ever touching each
other's files. The repository's ``config.properties`` is used with the inference
address replaced when another port is asked for.

The management API (load, scale and remove models, and fetch archives from any URL)
listens on a Unix socket in that private folder, never on a TCP port: no web page, and
no other user of the machine, can reach it. :meth:`ModelServer.register`,
:meth:`~ModelServer.scale` and the others speak HTTP over that socket.

::

    with ModelServer("model_store", models={"fer": "fer.mar"}) as server:
        print(server.ping())            # {'status': 'Healthy'}
        ...                             # server.inference_url, server.management_socket
    # stopped: no Java or Python worker left
"""
import atexit
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..errors import FERError
from ..paths import PACKAGE_PARENT

#: The repository's server configuration (next to the package folder).
REPO_CONFIG = PACKAGE_PARENT / "config.properties"
#: MMS refuses ports from 32767 up ("Invalid port number").
MAX_PORT = 32766
#: Worker processes of a model that ``ferlib serve`` registers: one per core, as each runs one
#: OpenMP thread and detection is single-threaded (at most 4: each holds its own network).
DEFAULT_WORKERS = max(1, min(os.cpu_count() or 1, 4))
#: Requests that share one forward pass when ``ferlib serve`` registers a model: one, as plain
#: multi-model-server does. MMS hands a whole batch to one worker, so batches as large as the number
#: of clients leave the other workers idle, and on photos the face search, not the network, takes
#: the time: at 8 clients, batches of 8 answered 54.7 photos/s, batches of 1 88-91 (README, Faces in
#: photos). Batches pay off for crops sent with X-Whole-Image under heavy load (``--batch-size``).
DEFAULT_BATCH_SIZE = 1


def port_is_free(port, host="127.0.0.1"):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(low=20000, high=MAX_PORT, exclude=(), rng=None):
    """A loopback port nobody listens on, below MMS's limit (the kernel's own picks are above it)."""
    rng = rng or random.Random()
    for _ in range(200):
        port = rng.randint(low, high)
        if port not in exclude and port_is_free(port):
            return port
    raise FERError(f"no free port found between {low} and {high}")


def read_properties(path):
    """``key=value`` lines of a Java properties file (comments and blank lines skipped), in order."""
    props = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "!")) or "=" not in line:
            continue
        key, value = line.split("=", 1)
        props[key.strip()] = value.strip()
    return props


def _executable(name):
    """``name`` next to this Python (the venv's bin), else on the PATH."""
    here = Path(sys.executable).parent / name
    if here.is_file():
        return str(here)
    found = shutil.which(name)
    if not found:
        raise FERError(f"{name} not found: install the serving extra (pip install -e '.[serve]') "
                       "and Java 8 or newer")
    return found


class ModelServer:
    """A multi-model-server process tree, started and stopped from Python.

    Parameters
    ----------
    model_store : str or Path
        Folder of the ``.mar`` files.
    models : dict, optional
        ``{name: "file.mar"}`` loaded at start (``--models``), with the config's
        ``default_workers_per_model`` workers each and no batching; use :meth:`register` for batching.
    config : str or Path, optional
        The properties file to start from (default the repository's
        ``config.properties``).
    inference_port : int or "free", optional
        Replace the inference port of the config; ``"free"`` picks an unused port below 32767.
    workdir : str or Path, optional
        Working folder (logs, pid file, worker sockets, the management API's socket);
        default a new temporary folder, removed by :meth:`stop` unless ``keep_workdir``.
    extra_properties : dict, optional
        More ``config.properties`` settings (e.g. ``{"default_workers_per_model": "2"}``).
    worker_threads : int, optional
        ``OMP_NUM_THREADS`` of the workers; default the caller's, else 1.
    """

    def __init__(self, model_store, models=None, config=None, inference_port=None, workdir=None,
                 keep_workdir=False, extra_properties=None, worker_threads=None):
        self.model_store = Path(model_store).resolve()
        self.models = dict(models or {})
        self.config_source = Path(config) if config else REPO_CONFIG
        if not self.config_source.is_file():
            raise FERError(f"server configuration {self.config_source} not found")
        self.properties = read_properties(self.config_source)
        self.properties.update(extra_properties or {})
        if inference_port == "free":
            inference_port = free_port()
        if inference_port is not None:
            self.properties["inference_address"] = f"http://127.0.0.1:{int(inference_port)}"
        self.inference_url = self.properties.get("inference_address", "http://127.0.0.1:8080")
        self._own_workdir = workdir is None
        # Short path: worker sockets live here and Unix socket paths must stay under 108 bytes.
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="mms-", dir="/tmp" if os.name == "posix" else None))
        self.management_socket = self.workdir / "management.sock"
        self.properties["management_address"] = f"unix:{self.management_socket}"
        self.keep_workdir = keep_workdir
        self.log_dir = self.workdir / "logs"
        self.worker_threads = worker_threads
        self.process = None

    # -- life cycle ---------------------------------------------------------------------------------

    @property
    def env(self):
        env = dict(os.environ)
        # The pid file (Python's tempdir), the worker sockets (Java's tmpdir, from TEMP) and the logs.
        env.update(TMPDIR=str(self.workdir), TEMP=str(self.workdir), LOG_LOCATION=str(self.log_dir),
                   METRICS_LOCATION=str(self.log_dir))
        # Workers run the launcher's Python (sys.executable); keep its bin first for tools it calls.
        env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
        if self.worker_threads:
            env["OMP_NUM_THREADS"] = str(self.worker_threads)
        else:
            # One OpenMP thread per worker unless told otherwise: add workers for more cores.
            env.setdefault("OMP_NUM_THREADS", "1")
        return env

    def start(self, timeout=180):
        """Start the server and wait until it answers and every model has a ready worker."""
        if self.process is not None:
            raise FERError("this server is already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        config_path = self.workdir / "config.properties"
        config_path.write_text("".join(f"{k}={v}\n" for k, v in self.properties.items()), encoding="utf-8")
        number = int(self.inference_url.rsplit(":", 1)[1])
        if number > MAX_PORT:
            raise FERError(f"port {number} is too high: multi-model-server accepts ports below 32767")
        if not port_is_free(number):
            raise FERError(f"port {number} is in use: is a model server already running? "
                           "(multi-model-server --stop, or choose another port)")
        os.chmod(self.workdir, 0o700)  # the management socket inside: this user only
        cmd = [_executable("multi-model-server"), "--start", "--foreground", "--mms-config", str(config_path),
               "--model-store", str(self.model_store)]
        if self.models:
            cmd += ["--models", *(f"{name}={mar}" for name, mar in self.models.items())]
        self._stdout = open(self.workdir / "server_stdout.log", "wb")
        self.process = subprocess.Popen(cmd, cwd=self.workdir, env=self.env, stdout=self._stdout,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        # A notebook kernel or script that ends without stop() still takes the server down.
        atexit.register(self.stop)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout):
        deadline = time.time() + timeout
        while True:
            if self.process.poll() is not None:
                raise FERError(f"multi-model-server exited with status {self.process.returncode}:\n{self.log_tail()}")
            try:
                if self.ping().get("status") == "Healthy" and all(self.ready_workers(m) for m in self.models):
                    return
            except OSError:
                pass
            if time.time() > deadline:
                raise FERError(f"multi-model-server not ready after {timeout} s:\n{self.log_tail()}")
            time.sleep(0.5)

    def log_tail(self, lines=30):
        """The last lines of the server's own output and main log, for error messages."""
        text = []
        for path in (self.workdir / "server_stdout.log", self.log_dir / "mms_log.log"):
            if path.is_file():
                text.append(f"--- {path}:\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(text)

    def processes(self):
        """The live processes of this server (launcher, Java, Python workers)."""
        import psutil

        if self.process is None:
            return []
        found = {}
        try:
            root = psutil.Process(self.process.pid)
            found[root.pid] = root
            for child in root.children(recursive=True):
                found[child.pid] = child
        except psutil.NoSuchProcess:
            pass
        # Workers whose parent died are re-parented, but keep the session.
        for proc in psutil.process_iter(["pid"]):
            try:
                if os.getsid(proc.pid) == self.process.pid:
                    found[proc.pid] = proc
            except (ProcessLookupError, PermissionError, psutil.Error):
                continue
        return [p for p in found.values() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

    def stop(self, timeout=30):
        """Stop the server (``multi-model-server --stop``, then signals) and wait until no process is left.

        Returns the processes still alive afterwards (an empty list when all is well).
        """
        import psutil

        if self.process is None:
            return []
        try:
            subprocess.run([_executable("multi-model-server"), "--stop"], cwd=self.workdir, env=self.env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout)
        except (subprocess.TimeoutExpired, OSError, FERError):
            pass
        procs = self.processes()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not procs:
                break
            try:
                os.killpg(self.process.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
            for p in procs:
                try:
                    p.send_signal(sig)
                except psutil.Error:
                    pass
            _, procs = psutil.wait_procs(procs, timeout=timeout / 2)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        left = self.processes()
        self._stdout.close()
        self.process = None
        atexit.unregister(self.stop)
        if self._own_workdir and not self.keep_workdir and not left:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return left

    def __enter__(self):
        return self.start() if self.process is None else self

    def __exit__(self, *exc):
        self.stop()

    # -- HTTP ---------------------------------------------------------------------------------------

    def _request(self, method, url, timeout=30, **kwargs):
        import requests

        reply = requests.request(method, url, timeout=timeout, **kwargs)
        return self._answer(method, url, reply.status_code, reply.text)

    @staticmethod
    def _answer(method, url, status, text):
        try:
            body = json.loads(text)
        except ValueError:
            body = {"message": text}
        if status >= 400:
            message = body.get("message", body) if isinstance(body, dict) else body
            raise FERError(f"{method} {url}: {status} {message}")
        return body

    def manage(self, method, path, params=None, timeout=30):
        """A request to the management API over its Unix socket, e.g. ``manage("GET", "/models")``."""
        from urllib.parse import urlencode

        target = path + (f"?{urlencode(params)}" if params else "")
        connection = _UnixHTTPConnection(str(self.management_socket), timeout=timeout)
        try:
            connection.request(method, target)
            reply = connection.getresponse()
            return self._answer(method, f"unix:{self.management_socket}{target}", reply.status,
                                reply.read().decode("utf-8", "replace"))
        finally:
            connection.close()

    def ping(self):
        """``GET /ping`` of the inference API: ``{'status': 'Healthy'}`` when up."""
        return self._request("GET", f"{self.inference_url}/ping", timeout=5)

    def describe(self, name):
        """``GET /models/NAME`` of the management API: version, batch settings, workers."""
        answer = self.manage("GET", f"/models/{name}")
        return answer[0] if isinstance(answer, list) else answer

    def ready_workers(self, name):
        try:
            workers = self.describe(name).get("workers", [])
        except (FERError, OSError):
            return 0
        return sum(w.get("status") == "READY" for w in workers)

    def register(self, mar, name=None, batch_size=DEFAULT_BATCH_SIZE, max_batch_delay=100, initial_workers=1,
                 timeout=180):
        """Load an archive of the model store with MMS batching (``POST /models``); wait for its workers.

        ``batch_size`` requests (or fewer, after ``max_batch_delay`` ms) reach the
        handler together and share one forward pass.
        """
        twin = self._same_archive(mar)
        if twin:
            raise FERError(f"{mar} is already served as model {twin!r}: multi-model-server unpacks identical "
                           "archives into one folder and unregistering either deletes it under the other. "
                           f"Change that model instead (scale it), or unregister {twin!r} first")
        params = {"url": str(mar), "batch_size": batch_size, "max_batch_delay": max_batch_delay,
                  "initial_workers": initial_workers, "synchronous": "true"}
        if name:
            params["model_name"] = name
        answer = self.manage("POST", "/models", params=params, timeout=timeout)
        name = name or Path(mar).stem
        self.models[name] = str(mar)
        self.wait_workers(name, initial_workers, timeout)
        return answer

    def _same_archive(self, mar):
        """The name of a served model whose archive has the same bytes as ``mar``, if any."""
        import hashlib

        def digest(path):
            path = self.model_store / path
            return hashlib.sha1(path.read_bytes()).hexdigest() if path.is_file() else None

        wanted = digest(mar)
        return next((name for name, served in self.models.items() if wanted and digest(served) == wanted), None)

    def scale(self, name, workers, timeout=180):
        """Set the number of workers of a model (``PUT /models/NAME?min_worker=..``) and wait for them."""
        answer = self.manage("PUT", f"/models/{name}",
                             params={"min_worker": workers, "max_worker": workers, "synchronous": "true"},
                             timeout=timeout)
        self.wait_workers(name, workers, timeout)
        return answer

    def wait_workers(self, name, count, timeout=180):
        deadline = time.time() + timeout
        while self.ready_workers(name) < count:
            if time.time() > deadline:
                raise FERError(f"model {name}: fewer than {count} ready workers after {timeout} s:\n"
                               f"{self.log_tail()}")
            time.sleep(0.5)

    def unregister(self, name):
        answer = self.manage("DELETE", f"/models/{name}")
        self.models.pop(name, None)
        return answer

    def metrics_log(self):
        """Text of the model metrics log (PredictionTime, the handler's FERBatch* metrics...)."""
        path = self.log_dir / "model_metrics.log"
        return path.read_text(errors="replace") if path.is_file() else ""


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a Unix socket (the management API's)."""

    def __init__(self, socket_path, timeout=30):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)
