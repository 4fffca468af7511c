"""Training on several machines with MXNet's dist_sync kvstore, simulated on loopback.

One scheduler, one server and two workers run as local processes on
127.0.0.1, each with the standard DMLC environment variables, exactly as on
real machines. The workers start from different seeds, read different halves
of the training set and must still end with the same weights: the kvstore
gives both the first worker's initial weights and sums their gradients.
"""
import json
import os
import random
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import ferlib  # noqa: F401  (numpy shim before mxnet)
from ferlib import train as fer_train

import mxnet as mx  # noqa: E402

from conftest import REPO

TIMEOUT = 180  # seconds for the whole job; a hang must fail the test, not block the suite


def free_port(low=20000, high=32000):
    """A TCP port below 32768 that nothing listens on (ephemeral ports start above)."""
    ports = list(range(low, high))
    random.shuffle(ports)
    for port in ports[:200]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free TCP port on 127.0.0.1")


def dmlc_env(role, port, num_workers=2):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DMLC_", "PS_"))}
    env.update(DMLC_ROLE=role, DMLC_PS_ROOT_URI="127.0.0.1", DMLC_PS_ROOT_PORT=str(port),
               DMLC_NUM_SERVER="1", DMLC_NUM_WORKER=str(num_workers), DMLC_NODE_HOST="127.0.0.1",
               OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    return env


def _tail(path, lines=15):
    text = path.read_text(errors="replace") if path.exists() else "(no log)"
    return "\n".join(text.splitlines()[-lines:])


@pytest.mark.slow
def test_two_workers_on_loopback_end_with_the_same_weights(synthetic_cache, tmp_path):
    port = free_port()
    out = tmp_path / "run"
    model_kwargs = {"width": 0.125, "batch_norm": False}
    train_cmd = [sys.executable, "-m", "ferlib", "train", "--data", str(synthetic_cache), "--out", str(out),
                 "--model", "vgg13", "--width", "0.125", "--no-batch-norm", "--input-size", "32",
                 "--batch-size", "32", "--epochs", "2", "--lr", "0.02", "--gpus", "cpu", "--quiet"]
    # As in the README, every role runs the same command: for the scheduler and the
    # server, importing MXNet starts their loop, and they exit when the workers are done.
    roles = [("scheduler", train_cmd),
             ("server", train_cmd),
             ("worker0", train_cmd + ["--seed", "1"]),
             ("worker1", train_cmd + ["--seed", "2"])]
    procs, logs = {}, {}
    started = time.time()
    try:
        for name, cmd in roles:
            logs[name] = tmp_path / f"{name}.log"
            with open(logs[name], "wb") as log:
                procs[name] = subprocess.Popen(cmd, cwd=REPO, env=dmlc_env(name.rstrip("01"), port),
                                               stdout=log, stderr=subprocess.STDOUT)
        for name, proc in procs.items():
            remaining = max(1.0, TIMEOUT - (time.time() - started))
            try:
                code = proc.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                pytest.fail(f"{name} still running after {TIMEOUT} s:\n" +
                            "\n".join(f"--- {n}\n{_tail(p)}" for n, p in logs.items()))
            assert code == 0, f"{name} exited with {code}:\n{_tail(logs[name])}"
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)

    worker_dirs = [out, out / "workers" / "1"]
    for folder in worker_dirs:
        config = json.loads((folder / "config.json").read_text())
        assert config["kvstore"] == "dist_sync" and config["workers"] == 2
        history = json.loads((folder / "history.json").read_text())
        assert [r["epoch"] for r in history] == [1, 2]  # validation (prediction) between the epochs
    first, second = (mx.nd.load(str(folder / "checkpoint.params")) for folder in worker_dirs)
    assert first.keys() == second.keys() and first
    for key in first:
        np.testing.assert_allclose(second[key].asnumpy(), first[key].asnumpy(), rtol=1e-6, atol=1e-7,
                                   err_msg=key)
    # The weights moved away from the start both workers were given (worker 0's, seed 1),
    # and worker 1's own seed would have started elsewhere.
    starts = {}
    for seed in (1, 2):
        net = fer_train.build_net("vgg13", {**model_kwargs, "input_size": 32}, [mx.cpu()], seed=seed)
        starts[seed] = [p.data().asnumpy() for p in net.collect_params().values()]
    net.load_parameters(str(out / "checkpoint.params"))
    finals = [p.data().asnumpy() for p in net.collect_params().values()]
    assert all(not np.allclose(a, b) for a, b in zip(finals, starts[1]))
    assert not np.allclose(starts[1][0], starts[2][0])
