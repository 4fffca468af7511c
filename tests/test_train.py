"""ferlib.train: the training loop, its run folder, resume, devices and errors.

The fast tests train a tiny VGG13 (1/8 of the channels, 32x32 input) on the
session's small synthetic set for one or two epochs; the slow one shows that a
small variant really learns the synthetic set.
"""
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

import ferlib
from ferlib import EMOTIONS, FERError
from ferlib import cli
from ferlib import data as fer_data
from ferlib import model as fer_model
from ferlib import train as fer_train
from ferlib.predict import majority_faces, predict_probabilities, validation_accuracy

import mxnet as mx  # noqa: E402  (after ferlib)

TINY = dict(model="vgg13", model_kwargs={"width": 0.125, "batch_norm": True}, input_size=32, batch_size=32,
            lr=0.01, gpus="cpu", progress=False)


def _params(path):
    return {k: v.asnumpy() for k, v in mx.nd.load(str(path)).items()}


# --------------------------------------------------------------------------- devices


def test_two_cpu_contexts_give_the_loss_and_update_of_one():
    """Data parallelism: the batch split over cpu(0), cpu(1) and summed by a kvstore
    gives the same loss and the same new weights as the whole batch on one device."""
    kwargs = {"width": 0.125, "batch_norm": False, "conv_dropout": 0.0, "dense_dropout": 0.0, "input_size": 32}
    rng = np.random.default_rng(0)
    x = mx.nd.array(rng.normal(size=(16, 1, 32, 32)).astype(np.float32))
    y = mx.nd.array(rng.dirichlet(np.ones(8), size=16).astype(np.float32))
    loss_fn = ferlib.losses.get_loss("crossentropy")
    results = []
    for ctx in ([mx.cpu(0)], [mx.cpu(0), mx.cpu(1)]):
        net = fer_train.build_net("vgg13", kwargs, ctx, seed=3)
        trainer = fer_train.make_trainer(net, lr=0.1, momentum=0.9, kvstore=fer_train.make_kvstore(None, ctx))
        loss, correct = fer_train.train_batch(net, trainer, loss_fn, x, y, ctx)
        # Structural order: the two networks' parameter names differ by their prefix only.
        params = [[d.asnumpy() for d in p.list_data()] for p in net.collect_params().values()]
        initial = fer_train.build_net("vgg13", kwargs, [mx.cpu(0)], seed=3)
        start = [p.data().asnumpy() for p in initial.collect_params().values()]
        results.append((loss.asscalar(), correct.asscalar(), params, start))
    (loss1, correct1, params1, start1), (loss2, correct2, params2, start2) = results
    assert fer_train.make_kvstore(None, [mx.cpu(0), mx.cpu(1)]) == "local"
    assert loss2 == pytest.approx(loss1, rel=1e-5)
    assert correct2 == correct1
    for a, b in zip(start1, start2):
        np.testing.assert_array_equal(a, b)  # same seed, same starting weights
    moved = 0
    for (single,), (first, second), before in zip(params1, params2, start1):
        np.testing.assert_allclose(first, single, rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(first, second)  # both devices hold the same weights
        moved += not np.allclose(single, before)
    assert moved == len(params1)  # the step changed every parameter


def test_sharpness_aware_step_takes_the_gradient_uphill_and_restores_the_weights():
    """With sam_rho, the SGD step uses the gradient at w + rho * g / ||g|| (Foret et al.), computed here
    by hand for a linear layer and a squared loss; the weights are not left moved, and on two CPU
    contexts each device moves along its own slice's gradient."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 3)).astype(np.float32)
    y = rng.normal(size=(6, 2)).astype(np.float32)
    w0 = rng.normal(size=(2, 3)).astype(np.float32)
    lr, rho = 0.1, 0.5

    def gradient(w, rows):  # of L2Loss summed over rows: 0.5 * the mean over the 2 outputs of (x w^T - y)^2
        return 0.5 * (x[rows] @ w.T - y[rows]).T @ x[rows]

    def step(ctx, sam_rho):
        net = mx.gluon.nn.Dense(2, in_units=3, use_bias=False)
        net.initialize(ctx=ctx)
        net.weight.set_data(mx.nd.array(w0))
        trainer = fer_train.make_trainer(net, lr=lr, momentum=0.0, kvstore=fer_train.make_kvstore(None, ctx))
        loss, _ = fer_train.train_batch(net, trainer, mx.gluon.loss.L2Loss(), mx.nd.array(x), mx.nd.array(y),
                                        ctx, sam_rho=sam_rho)
        return loss.asscalar(), [w.asnumpy() for w in net.weight.list_data()]

    def uphill_gradient(rows):
        g = gradient(w0, rows)
        return gradient(w0 + rho * g / np.linalg.norm(g), rows)

    plain_loss, (plain,) = step([mx.cpu(0)], 0.0)
    sam_loss, (sam,) = step([mx.cpu(0)], rho)
    np.testing.assert_allclose(plain, w0 - lr * gradient(w0, slice(None)) / 6, rtol=1e-5)
    np.testing.assert_allclose(sam, w0 - lr * uphill_gradient(slice(None)) / 6, rtol=1e-5)
    assert not np.allclose(sam, plain, rtol=1e-3)
    assert sam_loss == pytest.approx(plain_loss)  # the reported loss is the one before the move
    _, (first, second) = step([mx.cpu(0), mx.cpu(1)], rho)
    summed = uphill_gradient(slice(0, 3)) + uphill_gradient(slice(3, 6))  # each device its own move
    np.testing.assert_allclose(first, w0 - lr * summed / 6, rtol=1e-5)
    np.testing.assert_array_equal(first, second)


def test_a_sharpness_aware_run_records_rho_and_resumes_only_with_it(synthetic_cache, tmp_path):
    settings = dict(mode="crossentropy", num_epochs=1, seed=2, **TINY)
    sam = fer_train.train(synthetic_cache, tmp_path / "sam", sam_rho=0.05, **settings)
    plain = fer_train.train(synthetic_cache, tmp_path / "plain", **settings)
    assert json.loads((tmp_path / "sam" / "config.json").read_text())["sam_rho"] == 0.05
    # the first batch's loss is the same, the steps are not: the epochs' mean losses differ
    assert np.isfinite(sam["history"][0]["loss"]) and sam["history"][0]["loss"] != plain["history"][0]["loss"]
    with pytest.raises(FERError, match="cannot resume .* sam_rho 0.05 -> 0.0"):
        fer_train.train(synthetic_cache, tmp_path / "sam", resume=True, **{**settings, "num_epochs": 2})
    # a run from before the setting was plain SGD, and resumes as such
    config_path = tmp_path / "plain" / "config.json"
    config = json.loads(config_path.read_text())
    del config["sam_rho"]
    config_path.write_text(json.dumps(config))
    resumed = fer_train.train(synthetic_cache, tmp_path / "plain", resume=True, **{**settings, "num_epochs": 2})
    assert [r["epoch"] for r in resumed["history"]] == [1, 2]


@pytest.mark.parametrize("no_wd", [False, True])
def test_no_wd_spares_batchnorm_and_biases_from_the_weight_decay(no_wd):
    """With a zero gradient an SGD step is the weight decay alone: every parameter shrinks by lr * wd,
    or with no_wd only the weights of the convolution and dense layers."""
    net = mx.gluon.nn.HybridSequential()
    net.add(mx.gluon.nn.Conv2D(2, 3, in_channels=1), mx.gluon.nn.BatchNorm(in_channels=2),
            mx.gluon.nn.Dense(3, in_units=2 * 4 * 4))
    net.initialize()
    for param in net.collect_params().values():
        param.set_data(mx.nd.ones(param.shape))
    trainer = fer_train.make_trainer(net, lr=0.5, momentum=0.0, wd=0.2, no_wd=no_wd)
    with mx.autograd.record():
        loss = 0 * net(mx.nd.ones((1, 1, 6, 6))).sum()
    loss.backward()
    trainer.step(1)
    after = {re.sub(r"^.*?(conv|batchnorm|dense)\d+_", r"\1_", name): p.data().asnumpy()
             for name, p in net.collect_params().items()}
    spared = {"conv_bias", "batchnorm_gamma", "batchnorm_beta", "dense_bias"}
    for name, value in after.items():
        if name.endswith(("running_mean", "running_var")):
            continue
        expected = 1.0 if no_wd and name in spared else 1.0 - 0.5 * 0.2
        np.testing.assert_allclose(value, expected, rtol=1e-6, err_msg=name)
    assert spared <= set(after)


def test_a_run_without_decay_on_norms_and_biases_records_it_and_resumes_only_with_it(synthetic_cache, tmp_path):
    settings = dict(mode="crossentropy", num_epochs=1, seed=2, wd=0.05, **TINY)
    spared = fer_train.train(synthetic_cache, tmp_path / "spared", no_wd=True, **settings)
    plain = fer_train.train(synthetic_cache, tmp_path / "plain", **settings)
    assert json.loads((tmp_path / "spared" / "config.json").read_text())["no_wd"] is True
    assert spared["history"][0]["loss"] != plain["history"][0]["loss"]  # different steps from the first one
    with pytest.raises(FERError, match="cannot resume .* no_wd True -> False"):
        fer_train.train(synthetic_cache, tmp_path / "spared", resume=True, **{**settings, "num_epochs": 2})
    with pytest.raises(FERError, match="no_wd must be True or False"):
        fer_train.train(synthetic_cache, tmp_path / "refused", no_wd="yes", **settings)
    assert not (tmp_path / "refused").exists()


def test_a_run_with_label_smoothing_records_it_and_resumes_only_with_it(synthetic_cache, tmp_path):
    settings = dict(mode="crossentropy", num_epochs=1, seed=2, **TINY)
    smooth = fer_train.train(synthetic_cache, tmp_path / "smooth", label_smoothing=0.1, **settings)
    plain = fer_train.train(synthetic_cache, tmp_path / "plain", **settings)
    assert json.loads((tmp_path / "smooth" / "config.json").read_text())["label_smoothing"] == 0.1
    assert smooth["history"][0]["loss"] != plain["history"][0]["loss"]  # a different loss from the first batch
    with pytest.raises(FERError, match="cannot resume .* label_smoothing 0.1 -> 0.0"):
        fer_train.train(synthetic_cache, tmp_path / "smooth", resume=True, **{**settings, "num_epochs": 2})
    with pytest.raises(FERError, match="label smoothing does not apply to the multi_target loss"):
        fer_train.train(synthetic_cache, tmp_path / "refused", label_smoothing=0.1,
                        **{**settings, "mode": "multi_target"})
    assert not (tmp_path / "refused").exists()


def test_a_run_with_a_target_power_trains_on_sharper_targets_records_it_and_resumes_only_with_it(synthetic_cache,
                                                                                               tmp_path):
    settings = dict(mode="crossentropy", num_epochs=1, seed=2, **TINY)
    sharp = fer_train.train(synthetic_cache, tmp_path / "sharp", target_power=2, **settings)
    plain = fer_train.train(synthetic_cache, tmp_path / "plain", **settings)
    assert json.loads((tmp_path / "sharp" / "config.json").read_text())["target_power"] == 2
    assert sharp["history"][0]["loss"] != plain["history"][0]["loss"]  # other targets from the first batch
    with pytest.raises(FERError, match="cannot resume .* target_power 2 -> 1.0"):
        fer_train.train(synthetic_cache, tmp_path / "sharp", resume=True, **{**settings, "num_epochs": 2})
    with pytest.raises(FERError, match="does not apply to the majority scheme"):
        fer_train.train(synthetic_cache, tmp_path / "refused", target_power=2, **{**settings, "mode": "majority"})
    assert not (tmp_path / "refused").exists()


needs_bfloat16 = pytest.mark.skipif(not ferlib.cpu.cpu_has_bfloat16(),
                                    reason="this CPU has no AVX-512 BF16 instructions (avx512_bf16)")
needs_amx = pytest.mark.skipif(not ferlib.cpu.cpu_has_amx(), reason="this CPU has no AMX tiles (amx_tile, amx_bf16)")


def test_the_cpu_precision_is_bfloat16_only_where_its_steps_are_the_faster(tmp_path, monkeypatch, synthetic_cache):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n")
    assert ferlib.cpu.cpu_has_bfloat16(str(cpuinfo)) and not ferlib.cpu.cpu_has_amx(str(cpuinfo))
    assert ferlib.cpu.bfloat16_is_fast(str(cpuinfo))  # AMD Zen 4: AVX-512 BF16 and no AMX
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16x\nbugs\t: avx512_bf16\n")
    assert not ferlib.cpu.cpu_has_bfloat16(str(cpuinfo))  # a flag, whole, on the flags line
    assert not ferlib.cpu.cpu_has_bfloat16(str(tmp_path / "missing"))  # not Linux
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n")
    assert ferlib.cpu.cpu_has_amx(str(cpuinfo))
    for enabled in (True, False):  # Intel with AMX: bfloat16 without AMX ran at 0.68x float32
        monkeypatch.setattr(ferlib.cpu, "_amx_enabled", enabled)
        assert ferlib.cpu.bfloat16_is_fast(str(cpuinfo)) is enabled
    cpu, gpu = [mx.cpu()], [mx.gpu(0)]
    for fast in (True, False):
        monkeypatch.setattr(ferlib.cpu, "bfloat16_is_fast", lambda fast=fast: fast)
        assert fer_train.resolve_cpu_precision("auto", cpu) == ("bfloat16" if fast else "float32")
        assert fer_train.resolve_cpu_precision("float32", cpu) == "float32"
        assert fer_train.resolve_cpu_precision("auto", gpu) == fer_train.resolve_cpu_precision("bfloat16", gpu) \
            == "float32"  # GPUs: amp is their float16
    monkeypatch.setattr(ferlib.cpu, "cpu_has_bfloat16", lambda: False)
    with pytest.raises(FERError, match="no AVX-512 BF16 instructions.*use float32 or auto"):
        fer_train.resolve_cpu_precision("bfloat16", cpu)
    with pytest.raises(FERError, match="no AVX-512 BF16"):  # before anything is written
        fer_train.train(synthetic_cache, tmp_path / "run", cpu_precision="bfloat16", num_epochs=1, **TINY)
    assert not (tmp_path / "run").exists()
    with pytest.raises(FERError, match="cpu_precision must be one of float32, bfloat16, auto, got 'half'"):
        fer_train.resolve_cpu_precision("half", cpu)
    assert fer_train.RECIPES["cpu"].cpu_precision == "auto" and fer_train.RECIPES["paper"].cpu_precision == "float32"


_BFLOAT16_STEP = """
import os, ferlib, ferlib.utils
from ferlib import train
import mxnet as mx
print("cap after import:", os.environ.get("DNNL_MAX_CPU_ISA"), "| amx enabled:", ferlib.cpu.amx_enabled())
net = train.build_net("vgg13", {"width": 0.125, "batch_norm": True, "input_size": 32}, [mx.cpu()], seed=0)
step_net = train.bfloat16_view(net)
with mx.autograd.record():
    loss = step_net(mx.nd.ones((4, 1, 32, 32))).sum()
loss.backward()
mx.nd.waitall()
print("step done")
"""


@needs_amx
@pytest.mark.parametrize("user_cap", [None, "AVX512_CORE_BF16"])
def test_ferlib_switches_on_amx_for_bfloat16_steps_and_children_do_not_inherit_the_cap(user_cap):
    """oneDNN 2.4 runs AMX kernels only when asked, and only after Linux granted the tiles (else SIGILL);
    a cap the user set stands."""
    env = {k: v for k, v in os.environ.items() if k not in ferlib.cpu.ONEDNN_ISA_VARIABLES}
    env.update({"DNNL_VERBOSE": "1", "OMP_NUM_THREADS": "1"}, **({"DNNL_MAX_CPU_ISA": user_cap} if user_cap else {}))
    done = subprocess.run([sys.executable, "-c", _BFLOAT16_STEP], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert "step done" in lines
    kernels = [line for line in lines if line.startswith("dnnl_verbose,exec,cpu,convolution")]
    assert any("bf16" in line for line in kernels)  # the step computed in bfloat16 ...
    if user_cap is None:
        assert "cap after import: None | amx enabled: True" in lines  # ... the cap gone from the environment
        assert any("amx" in line for line in kernels)  # ... on AMX
    else:
        assert f"cap after import: {user_cap} | amx enabled: False" in lines  # so auto stays float32
        assert not any("amx" in line for line in kernels)


_VALIDATION_THREADS = """
import os, ferlib
import numpy as np
import mxnet as mx
from ferlib import train
from ferlib.predict import LabelledFaces, validation_accuracy
threads = lambda: len(os.listdir("/proc/self/task"))
net = train.build_net("vgg13", {"width": 0.125, "batch_norm": True, "input_size": 48}, [mx.cpu()], seed=0)
faces = LabelledFaces(np.random.RandomState(0).randint(0, 256, (300, 48, 48), dtype=np.uint8),
                      np.tile([0, 0, 48, 48], (300, 1)), np.zeros(300, dtype=np.int64))
validation_accuracy(net, LabelledFaces(*(a[:10] for a in faces)), 48)  # MXNet's threads all started
before = threads()
validation_accuracy(net, faces, 48)  # a first batch of 256 faces: 589,824 values copied from numpy
print("threads", before, threads(), "| parallel size", os.environ[ferlib.cpu.PARALLEL_COPY_VARIABLE])
"""


def _threads_before_and_after(script, env, more=""):
    """Run ``script`` in a fresh process; the groups of its line ``threads BEFORE AFTER`` + ``more``."""
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return re.search(r"threads (\d+) (\d+)" + more, done.stdout).groups()


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in Linux's /proc")
@pytest.mark.parametrize("user_size", [None, str(ferlib.cpu.MXNET_PARALLEL_COPY_SIZE)])
def test_a_validation_pass_starts_no_second_openmp_team_unless_the_user_asks(user_size):
    """MXNet copies 200,000 values or more with OpenMP; in the Python thread that would start a second
    team of threads, and then libgomp's threads sleep and wake at every training step (1.14x slower)."""
    env = {k: v for k, v in os.environ.items() if k != ferlib.cpu.PARALLEL_COPY_VARIABLE}
    env.update({"OMP_NUM_THREADS": "2"}, **({ferlib.cpu.PARALLEL_COPY_VARIABLE: user_size} if user_size else {}))
    before, after, size = _threads_before_and_after(_VALIDATION_THREADS, env, r" \| parallel size (\d+)")
    if user_size is None:
        assert (int(after), int(size)) == (int(before), ferlib.cpu.SERIAL_COPY_SIZE)
    else:  # MXNet's own threshold, which the user's value keeps: one more thread, the second team's
        assert (int(after), size) == (int(before) + 1, user_size)


_CHECKPOINT_THREADS = """
import os, tempfile, ferlib
import mxnet as mx
from mxnet import autograd
from ferlib import losses, train
threads = lambda: len(os.listdir("/proc/self/task"))
net = train.build_net("vgg13_half", {"width": 0.25, "input_size": 48}, [mx.cpu()], seed=0)
trainer, average = train.make_trainer(net), train.WeightAverage(net, 0.999)
x, y = mx.nd.random.uniform(shape=(8, 1, 48, 48)), mx.nd.softmax(mx.nd.random.uniform(shape=(8, 8)))
with autograd.record():
    loss = losses.get_loss("crossentropy")(net(x), y)
loss.backward()
trainer.step(8)
average.update(0)
with average.applied():
    net(x).asnumpy()  # a prediction, as validation makes: oneDNN keeps the weights in its blocked layout
mx.nd.waitall()
before = threads()
with tempfile.TemporaryDirectory() as run_dir:
    train.save_checkpoint(run_dir, net, trainer, {"epoch": 1}, average)
print("threads", before, threads())
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in Linux's /proc")
def test_a_checkpoint_with_a_weight_average_starts_no_second_openmp_team():
    """Saving the blocked arrays as they are would reorder them in the Python thread, with OpenMP: a second
    team, whose threads made a real run's OpenMP threads sleep and wake about a thousand times a second."""
    before, after = _threads_before_and_after(_CHECKPOINT_THREADS, {**os.environ, "OMP_NUM_THREADS": "2"})
    assert after == before


@needs_bfloat16
def test_anti_aliased_poolings_train_in_bfloat16_through_the_weight_average(tmp_path, synthetic_cache):
    """cpu_long_aa's blur is an average pooling because a fixed depthwise convolution failed here:
    oneDNN's bfloat16 reorder broke once the weight average had been swapped in for validation."""
    settings = {**TINY, "model_kwargs": {**TINY["model_kwargs"], "antialiased_blocks": 2}}
    result = fer_train.train(synthetic_cache, tmp_path / "run", cpu_precision="bfloat16", ema_decay=0.9,
                             num_epochs=2, **settings)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["cpu_precision"] == "bfloat16"
    losses = [record["loss"] for record in result["history"]]
    assert len(losses) == 2 and all(np.isfinite(losses)) and losses[1] < losses[0]
    assert all(np.isfinite(v).all() for v in _params(tmp_path / "run" / "best.params").values())


@needs_bfloat16
def test_a_bfloat16_step_moves_the_float32_weights_as_a_float32_step_would():
    """The view shares the network's float32 parameters, so its step trains them. bfloat16's 8 bits of
    mantissa bend each weight's step less than drawing another batch of the same data does, and the
    step lowers the batch's loss as much as the float32 step."""
    rng = np.random.default_rng(2)
    batches = [[mx.nd.array(a.astype(np.float32)) for a in (rng.normal(size=(32, 1, 32, 32)),
                                                             rng.dirichlet(np.ones(8), size=32))] for _ in range(2)]
    kwargs = {"width": 0.125, "batch_norm": True, "conv_dropout": 0.0, "dense_dropout": 0.0, "input_size": 32}
    loss_fn = ferlib.losses.get_loss("crossentropy")
    ctx = [mx.cpu()]

    def step(precision, x, y):
        """The float32 network's weight moves, and its loss on (x, y) before and after the step."""
        net = fer_train.build_net("vgg13", kwargs, ctx, seed=5)
        weights = [p for p in net.collect_params().values() if p.grad_req != "null"]
        before = [p.data().asnumpy() for p in weights]
        step_net = fer_train.bfloat16_view(net) if precision == "bfloat16" else net
        if precision == "bfloat16":
            assert {id(p) for p in step_net.collect_params().values()} == \
                {id(p) for p in net.collect_params().values()}
            with mx.autograd.predict_mode():
                exact, low = net(x).asnumpy(), step_net(x).asnumpy()
            assert low.dtype == np.float32
            np.testing.assert_allclose(low, exact, rtol=0.05, atol=0.02 * np.abs(exact).max())
            assert not np.array_equal(low, exact)  # it did compute in bfloat16
        def loss():  # with the batch's own BatchNorm statistics, as in the step
            with mx.autograd.train_mode():
                return loss_fn(net(x), y).mean().asscalar()

        loss_before = loss()
        fer_train.train_batch(step_net, fer_train.make_trainer(net, lr=0.1, momentum=0.0), loss_fn, x, y, ctx)
        assert all(p.data().dtype == np.float32 for p in weights)
        return [p.data().asnumpy() - b for p, b in zip(weights, before)], loss_before, loss()

    exact, loss_before, exact_after = step("float32", *batches[0])
    low, _, low_after = step("bfloat16", *batches[0])
    other_batch, _, _ = step("float32", *batches[1])

    def cosine(a, b):
        return (a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b)

    for a, b, c in zip(exact, low, other_batch):
        assert np.abs(b).max() > 0  # every weight moved
        assert cosine(a, b) > max(0.5, cosine(a, c))
    assert exact_after < loss_before and low_after == pytest.approx(exact_after, rel=0.01)


def test_the_first_convolution_on_two_channels_computes_the_same_sums_and_gradients():
    """The bfloat16 view's rewrite, checked in float32 where the sums are exact enough to compare:
    a zero channel beside the face, and zero weights beside the convolution's, change nothing."""
    kwargs = {"width": 0.125, "batch_norm": True, "conv_dropout": 0.0, "dense_dropout": 0.0, "input_size": 32}
    net = fer_train.build_net("vgg13_half", kwargs, [mx.cpu()], seed=3)
    params = net.collect_params()
    data = mx.sym.var("data")
    symbol = fer_train.first_conv_on_two_channels(net(data), params)
    internals = symbol.get_internals()
    known = {name: p.shape for name, p in params.items()}  # the weight's, which concat does not pass back
    shapes = dict(zip(internals.list_outputs(), internals.infer_shape(data=(4, 1, 32, 32), **known)[1]))
    assert shapes["two_channel_data_output"] == (4, 2, 32, 32)
    first_weight = next(p for name, p in params.items() if name.endswith("conv0_weight"))
    assert shapes["two_channel_weight_output"] == (first_weight.shape[0], 2, 3, 3) and first_weight.shape[1] == 1
    assert fer_train.first_conv_on_two_channels(symbol, params) is symbol  # it reads two channels already
    widened = mx.gluon.SymbolBlock(symbol, data, params=params)
    x = mx.nd.array(np.random.default_rng(0).normal(size=(4, 1, 32, 32)))
    weights = [p for p in params.values() if p.grad_req != "null"]

    def outputs_and_gradients(block):
        with mx.autograd.record():
            out = block(x)
        out.backward(mx.nd.ones_like(out))
        return out.asnumpy(), [p.grad().asnumpy().copy() for p in weights]

    out, grads = outputs_and_gradients(net)
    widened_out, widened_grads = outputs_and_gradients(widened)
    np.testing.assert_allclose(widened_out, out, rtol=1e-5, atol=1e-5)
    for a, b in zip(widened_grads, grads):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max())


def test_the_bfloat16_view_widens_the_first_convolution_unless_asked_not_to():
    net = fer_train.build_net("vgg13_half", {"width": 0.125, "input_size": 32}, [mx.cpu()])
    for view, widened in ((fer_train.bfloat16_view(net), True),
                          (fer_train.bfloat16_view(net, two_channel_input=False), False)):
        outputs = view(mx.sym.var("data")).get_internals().list_outputs()
        assert ("two_channel_data_output" in outputs) == widened


def test_a_run_kept_in_float32_by_auto_says_why(synthetic_cache, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(ferlib.cpu, "cpu_flags", lambda cpuinfo=None: frozenset({"fpu", "avx2", "fma"}))  # Zen 3
    result = fer_train.train(synthetic_cache, tmp_path / "run", cpu_precision="auto", num_epochs=1,
                             **{**TINY, "progress": True})
    assert "steps in float32 (this CPU has no AVX-512 BF16)" in capsys.readouterr().out
    assert result["config"]["cpu_precision"] == "float32"
    intel = frozenset({"avx512_bf16", "amx_tile", "amx_bf16"})
    monkeypatch.setattr(ferlib.cpu, "cpu_flags", lambda cpuinfo=None: intel)
    monkeypatch.setattr(ferlib.cpu, "_amx_enabled", False)  # AMX capped by the user
    assert "AMX is off" in ferlib.cpu.why_not_bfloat16()
    fer_train.train(synthetic_cache, tmp_path / "chosen", cpu_precision="float32", num_epochs=1,
                    **{**TINY, "progress": True})
    assert "steps in" not in capsys.readouterr().out  # float32 asked for: nothing to explain


@pytest.mark.skipif(not ferlib.cpu.bfloat16_is_fast(), reason="bfloat16 steps are not the faster on this CPU")
def test_a_bfloat16_run_records_it_and_exports_a_float32_network(synthetic_cache, tmp_path, capsys):
    result = fer_train.train(synthetic_cache, tmp_path / "run", cpu_precision="auto", num_epochs=1,
                             **{**TINY, "progress": True})
    assert "steps in bfloat16" in capsys.readouterr().out
    assert result["config"]["cpu_precision"] == "bfloat16"
    assert json.loads((tmp_path / "run" / "config.json").read_text())["cpu_precision"] == "bfloat16"
    symbol = (tmp_path / "run" / "model-symbol.json").read_text()
    assert "amp_cast" not in symbol and "bfloat16" not in symbol  # serving and ONNX see float32
    net, _ = fer_model.load_run(tmp_path / "run")
    faces = majority_faces(fer_data.load_cache(synthetic_cache), "val")
    assert validation_accuracy(net, faces, 32, [mx.cpu()]) == pytest.approx(result["best_val_acc"])


def test_parse_devices_and_amp_refusals(synthetic_cache, tmp_path):
    with pytest.raises(FERError, match="GPU 7 does not exist"):
        fer_train.train(synthetic_cache, tmp_path / "run", **{**TINY, "gpus": "7"})
    with pytest.raises(FERError, match="amp.*GPU"):
        fer_train.train(synthetic_cache, tmp_path / "run", amp=True, **TINY)
    assert fer_train.get_contexts("cpu:2") == [mx.cpu(0), mx.cpu(1)]
    assert fer_train.get_contexts(mx.cpu()) == [mx.cpu()]


# --------------------------------------------------------------------------- the run folder


@pytest.fixture(scope="module")
def one_epoch_run(synthetic_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    started = time.time()
    result = fer_train.train(synthetic_cache, out, mode="crossentropy", num_epochs=1, **TINY)
    return out, result, time.time() - started


def test_run_folder_follows_the_contract(one_epoch_run, synthetic_cache):
    out, result, _ = one_epoch_run
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "history.json", "history.csv", "best.params", "best.json", "checkpoint.params",
            "checkpoint.states", "checkpoint.json", "model-symbol.json", "model-0000.params",
            "labels.json"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    config = json.loads((out / "config.json").read_text())
    for key in ("model", "model_kwargs", "mode", "input_size", "emotions", "num_epochs", "batch_size", "lr",
                "schedule", "wd", "momentum", "seed", "devices", "data", "ferlib_version"):
        assert key in config, key
    assert config["emotions"] == list(EMOTIONS) == json.loads((out / "labels.json").read_text())
    assert config["devices"] == ["cpu(0)"] and config["input_size"] == 32
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 1 and set(history[0]) == set(fer_train.HISTORY_KEYS)
    record = history[0]
    assert record["epoch"] == 1 and record["lr"] == pytest.approx(0.01)
    assert 0 <= record["train_acc"] <= 1 and 0 <= record["val_acc"] <= 1
    assert record["loss"] > 0 and record["seconds"] > 0 and record["images_per_sec"] > 0
    csv_lines = (out / "history.csv").read_text().splitlines()
    assert csv_lines[0].split(",") == list(fer_train.HISTORY_KEYS) and len(csv_lines) == 2
    assert json.loads((out / "best.json").read_text()) == {"epoch": 1, "val_acc": record["val_acc"]}
    assert result["best_epoch"] == 1 and result["best_val_acc"] == record["val_acc"]
    assert result["history"] == history and result["run_dir"] == str(out)


def test_exported_and_reloaded_networks_reproduce_the_validation_accuracy(one_epoch_run, synthetic_cache):
    """best.params (load_run) and the exported graph (load_exported) give the recorded val accuracy."""
    out, result, _ = one_epoch_run
    data = fer_data.load_cache(synthetic_cache)
    val_faces = majority_faces(data, "val")
    expected = result["best_val_acc"]
    net, config = fer_model.load_run(out)
    assert config["model"] == "vgg13"
    assert validation_accuracy(net, val_faces, 32, [mx.cpu()]) == pytest.approx(expected)
    exported = fer_model.load_exported(out)
    assert validation_accuracy(exported, val_faces, 32, [mx.cpu()]) == pytest.approx(expected)


def test_an_existing_run_is_neither_overwritten_nor_resumed_with_other_settings(one_epoch_run, synthetic_cache):
    out, _, _ = one_epoch_run
    with pytest.raises(FERError, match="already holds a training run.*--resume.*--overwrite"):
        fer_train.train(synthetic_cache, out, num_epochs=1, **TINY)
    with pytest.raises(FERError, match="cannot resume .* lr 0.01 -> 0.02"):
        fer_train.train(synthetic_cache, out, num_epochs=2, resume=True, **{**TINY, "lr": 0.02})


# --------------------------------------------------------------------------- resume and checkpoints


class Interrupted(Exception):
    pass


def _stop_after(epochs):
    def callback(record):
        if record["epoch"] >= epochs:
            raise Interrupted  # like a kill right after the epoch's checkpoint
    return callback


def test_resume_continues_exactly_where_the_run_stopped(synthetic_cache, tmp_path):
    """Interrupted after epoch 1 and resumed == two epochs in one go (BatchNorm, dropout,
    augmentation and the probability-mode label draws included)."""
    settings = dict(mode="probability", num_epochs=2, schedule="cosine", warmup_epochs=1, seed=5, **TINY)
    whole = fer_train.train(synthetic_cache, tmp_path / "whole", **settings)
    with pytest.raises(Interrupted):
        fer_train.train(synthetic_cache, tmp_path / "parts", callback=_stop_after(1), **settings)
    assert json.loads((tmp_path / "parts" / "checkpoint.json").read_text())["epoch"] == 1
    resumed = fer_train.train(synthetic_cache, tmp_path / "parts", resume=True, **settings)
    assert [r["epoch"] for r in resumed["history"]] == [1, 2]
    for a, b in zip(whole["history"], resumed["history"]):
        for key in ("loss", "train_acc", "val_acc", "lr"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key
    first, second = _params(tmp_path / "whole" / "checkpoint.params"), _params(tmp_path / "parts" / "checkpoint.params")
    assert first.keys() == second.keys()
    for key in first:
        np.testing.assert_allclose(second[key], first[key], rtol=1e-4, atol=1e-5, err_msg=key)
    # Resuming a finished run trains nothing and keeps its history.
    again = fer_train.train(synthetic_cache, tmp_path / "parts", resume=True, **settings)
    assert again["history"] == resumed["history"]


def test_weight_average_is_validated_kept_and_resumed_exactly(synthetic_cache, tmp_path):
    """With ema_decay, validation, best.params and the export use the average of the weights;
    the checkpoint holds it beside the weights, so a resumed run still equals an uninterrupted one."""
    settings = dict(mode="crossentropy", num_epochs=2, schedule="cosine", warmup_epochs=1, seed=3,
                    optimizer="nag", ema_decay=0.9, **TINY)
    whole = fer_train.train(synthetic_cache, tmp_path / "whole", **settings)
    with pytest.raises(Interrupted):
        fer_train.train(synthetic_cache, tmp_path / "parts", callback=_stop_after(1), **settings)
    resumed = fer_train.train(synthetic_cache, tmp_path / "parts", resume=True, **settings)
    for a, b in zip(whole["history"], resumed["history"]):
        for key in ("loss", "val_acc", "val_acc_last"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key
    first, second = _params(tmp_path / "whole" / "checkpoint.params"), _params(tmp_path / "parts" / "checkpoint.params")
    assert first.keys() == second.keys() and any(k.startswith("average:") for k in first)
    for key in first:
        np.testing.assert_allclose(second[key], first[key], rtol=1e-4, atol=1e-5, err_msg=key)
    averaged = {k[len("average:"):] for k in first if k.startswith("average:")}
    assert averaged == {k for k in first if not k.startswith("average:")}
    # the average differs from the last weights, and it is what the run keeps
    assert any(not np.allclose(first[k], first["average:" + k]) for k in averaged)
    data = fer_data.load_cache(synthetic_cache)
    net, _ = fer_model.load_run(tmp_path / "whole")
    assert validation_accuracy(net, majority_faces(data, "val"), 32, [mx.cpu()]) == pytest.approx(whole["best_val_acc"])
    config = json.loads((tmp_path / "whole" / "config.json").read_text())
    assert config["optimizer"] == "nag" and config["ema_decay"] == 0.9
    # Without validating the last weights, the same training validates the same average, once.
    once = fer_train.train(synthetic_cache, tmp_path / "once", validate_last_weights=False, **settings)
    for a, b in zip(whole["history"], once["history"]):
        assert b["val_acc"] == pytest.approx(a["val_acc"]) and b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["val_acc_last"] is None and a["val_acc_last"] is not None
    # Updating the average every third step trains the same weights: only the average differs.
    every = fer_train.train(synthetic_cache, tmp_path / "every", ema_every=3, **settings)
    for a, b in zip(whole["history"], every["history"]):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5) and b["val_acc_last"] == pytest.approx(a["val_acc_last"])
    third = _params(tmp_path / "every" / "checkpoint.params")
    for key in averaged:
        np.testing.assert_allclose(third[key], first[key], rtol=1e-4, atol=1e-5, err_msg=key)
    assert any(not np.allclose(third["average:" + k], first["average:" + k]) for k in averaged)
    assert json.loads((tmp_path / "every" / "config.json").read_text())["ema_every"] == 3


def test_weight_average_follows_its_formula_and_applied_restores_the_weights():
    net = mx.gluon.nn.Dense(2, in_units=3)
    net.initialize(mx.init.Constant(1.0))
    average = fer_train.WeightAverage(net, decay=0.5)
    net.weight.set_data(mx.nd.full((2, 3), 3.0))
    average.update(step=1000)  # d = min(0.5, 1001/1010) = 0.5
    np.testing.assert_allclose(average.shadow["weight"].asnumpy(), 2.0)
    average.update(step=0)  # d = min(0.5, 1/10) = 0.1: early steps follow the weights
    np.testing.assert_allclose(average.shadow["weight"].asnumpy(), 0.1 * 2.0 + 0.9 * 3.0)
    with average.applied():
        np.testing.assert_allclose(net.weight.data().asnumpy(), 2.9)
    np.testing.assert_allclose(net.weight.data().asnumpy(), 3.0)
    with pytest.raises(FERError, match="ema_decay must be in"):
        fer_train.WeightAverage(net, decay=1.0)


def test_weight_average_every_few_steps_compounds_the_decay_of_the_steps_it_skips():
    net = mx.gluon.nn.Dense(2, in_units=3)
    net.initialize(mx.init.Constant(1.0))
    every = fer_train.WeightAverage(net, decay=0.5, every=3)
    each = fer_train.WeightAverage(net, decay=0.5)
    net.weight.set_data(mx.nd.full((2, 3), 3.0))
    for step in (0, 1):  # not yet a third step: the average waits
        every.update(step)
        np.testing.assert_allclose(every.shadow["weight"].asnumpy(), 1.0)
    every.update(2)  # d = 0.1 x 2/11 x 3/12 for steps 0-2
    d = 0.1 * (2 / 11) * (3 / 12)
    np.testing.assert_allclose(every.shadow["weight"].asnumpy(), d * 1.0 + (1 - d) * 3.0, rtol=1e-6)
    for step in (0, 1, 2):  # with the same weights at each step, updating every step gives the same
        each.update(step)
    np.testing.assert_allclose(each.shadow["weight"].asnumpy(), every.shadow["weight"].asnumpy(), rtol=1e-6)
    for step in range(1000, 1003):  # late steps: 0.5 each, 0.125 together
        every.update(step)
    np.testing.assert_allclose(every.shadow["weight"].asnumpy(), 0.125 * (3.0 - 2 * d) + 0.875 * 3.0, rtol=1e-6)
    for bad in (0, 2.5, True):
        with pytest.raises(FERError, match="ema_every must be"):
            fer_train.WeightAverage(net, decay=0.5, every=bad)


def test_interrupted_checkpoint_write_keeps_the_previous_checkpoint(synthetic_cache, tmp_path, monkeypatch):
    out = tmp_path / "run"
    calls = []
    original = mx.gluon.Trainer.save_states

    def failing_save_states(self, fname):
        calls.append(fname)
        if len(calls) == 2:  # epoch 2: half a file, then the disk "fills up"
            with open(fname, "wb") as f:
                f.write(b"\0" * 100)
            raise OSError("No space left on device")
        return original(self, fname)

    monkeypatch.setattr(mx.gluon.Trainer, "save_states", failing_save_states)
    with pytest.raises(OSError, match="No space left"):
        fer_train.train(synthetic_cache, out, num_epochs=2, **TINY)
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    info = fer_train.load_checkpoint(out)  # hashes match: params and states of epoch 1
    assert info["epoch"] == 1
    monkeypatch.setattr(mx.gluon.Trainer, "save_states", original)
    result = fer_train.train(synthetic_cache, out, num_epochs=2, resume=True, **TINY)
    assert [r["epoch"] for r in result["history"]] == [1, 2]


def test_a_checkpoint_whose_files_disagree_is_refused(one_epoch_run, tmp_path):
    import shutil
    out = tmp_path / "copy"
    shutil.copytree(one_epoch_run[0], out)
    (out / "checkpoint.states").write_bytes(b"not the states of this checkpoint")
    with pytest.raises(FERError, match="does not match .*checkpoint.json"):
        fer_train.load_checkpoint(out)


# --------------------------------------------------------------------------- bad input


def test_bad_requests_fail_with_one_clear_message(synthetic_cache, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FERError, match="is not a prepared FER\\+ cache"):
        fer_train.train(empty, tmp_path / "run", **TINY)
    with pytest.raises(FERError, match="does not exist"):
        fer_train.train(tmp_path / "missing", tmp_path / "run", **TINY)
    with pytest.raises(FERError, match="unknown label mode 'votes'; choose one of: majority"):
        fer_train.train(synthetic_cache, tmp_path / "run", mode="votes", **TINY)
    with pytest.raises(FERError, match="unknown model 'vgg16'; choose one of: vgg13, vgg13_bn"):
        fer_train.train(synthetic_cache, tmp_path / "run", **{**TINY, "model": "vgg16"})
    with pytest.raises(FERError, match="model 'vgg13' has no option depth; its options are: classes"):
        fer_train.train(synthetic_cache, tmp_path / "run", **{**TINY, "model_kwargs": {"depth": 3}})
    with pytest.raises(FERError, match="unknown lr schedule 'linear'"):
        fer_train.train(synthetic_cache, tmp_path / "run", schedule="linear", **TINY)
    with pytest.raises(FERError, match="num_epochs must be a positive whole number"):
        fer_train.train(synthetic_cache, tmp_path / "run", num_epochs=0, **TINY)
    with pytest.raises(FERError, match="dist_sync.*DMLC_ROLE=worker"):
        fer_train.train(synthetic_cache, tmp_path / "run", kvstore="dist_sync", **TINY)
    with pytest.raises(FERError, match="sam_rho must be a number >= 0"):
        fer_train.train(synthetic_cache, tmp_path / "run", sam_rho=-0.05, **TINY)
    with pytest.raises(FERError, match="sam_rho.*not supported with amp"):
        fer_train.train(synthetic_cache, tmp_path / "run", sam_rho=0.05, amp=True, **TINY)
    assert not (tmp_path / "run").exists()  # nothing written for a refused request


def test_cli_reports_errors_in_one_line(synthetic_cache, tmp_path, capsys):
    code = cli.main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--gpus", "0"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert err.startswith("error: --gpus '0': GPU 0 does not exist")


def test_cli_trains_and_says_which_devices_it_used(synthetic_cache, tmp_path, capsys):
    out = tmp_path / "cli-run"
    code = cli.main(["train", "--data", str(synthetic_cache), "--out", str(out), "--model", "vgg13",
                     "--width", "0.125", "--input-size", "32", "--epochs", "1", "--gpus", "cpu:2",
                     "--lr", "0.01", "--conv-dropout", "0", "--dense-dropout", "0.1", "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "devices: cpu(0), cpu(1)" in printed
    assert "best validation accuracy" in printed and str(out) in printed
    config = json.loads((out / "config.json").read_text())
    assert config["devices"] == ["cpu(0)", "cpu(1)"] and config["kvstore"] == "local"
    assert config["model_kwargs"] == {"width": 0.125, "conv_dropout": 0.0, "dense_dropout": 0.1, "input_size": 32}


# --------------------------------------------------------------------------- pieces


def test_ferplus_schedule_is_the_papers():
    assert fer_train.RECIPES["paper"] == fer_train.Recipe(
        model="vgg13", model_kwargs={}, input_size=64, batch_size=32, lr=0.05, schedule="ferplus", wd=0.0,
        momentum=0.9, num_epochs=100, lr_steps=(20, 40))
    lr_at = fer_train.make_lr_schedule("ferplus", 0.05, 100, iters_per_epoch=10)
    assert [lr_at(e * 10) for e in (0, 19, 20, 39, 40, 99)] == pytest.approx([0.05, 0.05, 0.025, 0.025, 0.005, 0.005])
    assert lr_at(199) == 0.05 and lr_at(200) == 0.025  # changes at the first batch of epoch 20


def test_cosine_schedule_warms_up_then_decays_to_zero():
    lr_at = fer_train.make_lr_schedule("cosine", 0.1, 10, iters_per_epoch=10, warmup_epochs=2)
    values = np.array([lr_at(i) for i in range(100)])
    assert values[0] == 0.0 and values[20] == pytest.approx(0.1)
    assert np.all(np.diff(values[:21]) > 0) and np.all(np.diff(values[20:]) < 0)
    assert values[99] < 0.001
    assert fer_train.default_warmup_epochs(30) == 3 and fer_train.default_warmup_epochs(100) == 5


def test_shards_are_equal_disjoint_and_cover_the_split(synthetic_cache):
    dataset = fer_data.FERPlusDataset(synthetic_cache, "train", "majority")
    shards = [fer_train._shard(dataset, rank, 3) for rank in range(3)]
    sizes = {len(s) for s in shards}
    assert sizes == {len(dataset) // 3}
    rows = np.concatenate([s.rows for s in shards])
    assert len(np.unique(rows)) == len(rows) and set(rows) <= set(dataset.rows)
    x, y = shards[1][0]
    assert x.shape == (1, 64, 64) and np.array_equal(y, shards[1].targets[0])


def test_live_plot_prints_outside_a_notebook_and_draws_the_history(tmp_path, capsys):
    plot = fer_train.LivePlot(title="tiny")
    for epoch, (loss, acc) in enumerate([(2.0, 0.3), (1.5, 0.5)], start=1):
        plot({"epoch": epoch, "loss": loss, "train_acc": acc, "val_acc": acc - 0.1, "lr": 0.05,
              "seconds": 1.0, "images_per_sec": 100.0})
    printed = capsys.readouterr().out.splitlines()
    assert printed[1].startswith("epoch 2: loss 1.5000, train acc 0.500, val acc 0.400")
    fig = plot.figure()
    loss_ax, acc_ax = fig.axes
    assert list(loss_ax.lines[0].get_ydata()) == [2.0, 1.5]
    assert [list(line.get_ydata()) for line in acc_ax.lines] == [[0.3, 0.5], [pytest.approx(0.2), 0.4]]
    assert plot.save(tmp_path / "curve.png").stat().st_size > 1000


# --------------------------------------------------------------------------- it learns


@pytest.fixture(scope="module")
def learnable_cache(tmp_path_factory):
    folder = tmp_path_factory.mktemp("learn")
    fer, ferplus = ferlib.synth.write_synthetic(folder / "csv", n=3000, seed=1)
    fer_data.prepare(fer, ferplus, folder / "cache", progress=False)
    return folder / "cache"


@pytest.mark.slow
def test_small_variant_learns_the_synthetic_set(learnable_cache, tmp_path):
    """The 'synthetic' recipe (vgg13_small at 48x48 without dropout): >= 90% validation accuracy
    (majority labels of PublicTest) within its 10 epochs; it stops at 95%."""
    recipe = fer_train.RECIPES["synthetic"]
    assert recipe.model == "vgg13_small" and recipe.num_epochs == 10
    result = fer_train.train(learnable_cache, tmp_path / "small", recipe, mode="crossentropy", gpus="cpu",
                             progress=False, callback=lambda r: r["val_acc"] >= 0.95)
    history = result["history"]
    assert result["best_val_acc"] >= 0.90, history
    assert result["best_val_acc"] - history[0]["val_acc"] >= 0.2  # learned over the epochs, not at once
    # best.params holds the best epoch, and so does the exported graph.
    data = fer_data.load_cache(learnable_cache)
    val_faces = majority_faces(data, "val")
    exported = fer_model.load_exported(tmp_path / "small")
    assert validation_accuracy(exported, val_faces, 48, [mx.cpu()]) == pytest.approx(result["best_val_acc"])


def test_recipes_are_named_settings_with_changes(synthetic_cache, tmp_path):
    cpu = fer_train.get_recipe("cpu", lr=0.01)
    assert cpu.lr == 0.01 and cpu.model == "vgg13_half" and fer_train.RECIPES["cpu"].lr == 0.05
    with pytest.raises(FERError, match="unknown recipe 'fast'; choose one of: paper, cpu, cpu_long, cpu_long_aa, cpu_long_aa_b32, cpu_small, synthetic"):
        fer_train.get_recipe("fast")
    with pytest.raises(FERError, match="no setting learning_rate; its settings are: model, model_kwargs"):
        fer_train.get_recipe("cpu", learning_rate=0.1)
    result = fer_train.train(synthetic_cache, tmp_path / "run", "synthetic", num_epochs=1, gpus="cpu", progress=False)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["lr"] == 0.02 and config["num_epochs"] == 1 and config["model"] == "vgg13_small"
    assert result["config"]["schedule"] == "cosine"


def test_the_command_line_changes_only_the_settings_it_is_given():
    from ferlib.cli import build_parser

    def recipe(*argv):
        return fer_train.recipe_from_args(build_parser().parse_args(["train", "--data", "d", "--out", "o", *argv]))

    assert recipe() == fer_train.RECIPES["paper"]
    assert recipe("--recipe", "cpu") == fer_train.RECIPES["cpu"]
    changed = recipe("--recipe", "cpu_small", "--lr", "0.01", "--dense-dropout", "0.3", "--lr-steps", "5,9",
                     "--optimizer", "nag", "--ema-decay", "0.99", "--ema-every", "4")
    assert changed == fer_train.RECIPES["cpu_small"].replace(
        lr=0.01, lr_steps=(5, 9), optimizer="nag", ema_decay=0.99, ema_every=4,
        model_kwargs={"conv_dropout": 0.0, "dense_dropout": 0.3})
    assert recipe("--recipe", "cpu", "--model", "vgg13").model_kwargs == {}  # another network: its own defaults
    assert recipe("--recipe", "cpu", "--no-validate-last-weights") == fer_train.RECIPES["cpu"].replace(
        validate_last_weights=False)
    assert recipe("--recipe", "cpu", "--sam-rho", "0.05").sam_rho == 0.05 and fer_train.RECIPES["cpu"].sam_rho == 0
    assert recipe("--recipe", "cpu_long", "--label-smoothing", "0.1").label_smoothing == 0.1
    assert fer_train.RECIPES["cpu_long"].label_smoothing == 0
    # cpu_long_aa is cpu_long with anti-aliased poolings in the last two blocks, and nothing else.
    assert fer_train.RECIPES["cpu_long_aa"] == fer_train.RECIPES["cpu_long"].replace(
        model_kwargs={"antialiased_blocks": 2})
    assert recipe("--recipe", "cpu_long", "--antialiased-blocks", "2") == fer_train.RECIPES["cpu_long_aa"]
    # docs/results.md's batch-32 runs were started as cpu_long_aa with these changes.
    assert recipe("--recipe", "cpu_long_aa", "--batch-size", "32", "--lr", "0.025", "--ema-decay", "0.9995",
                  "--ema-every", "4") == fer_train.RECIPES["cpu_long_aa_b32"] != fer_train.RECIPES["cpu_long_aa"]
    assert recipe("--recipe", "cpu_long", "--target-power", "2").target_power == 2.0
    assert recipe("--recipe", "cpu_long", "--no-wd").no_wd is True and recipe("--recipe", "cpu_long").no_wd is False
    assert recipe("--recipe", "cpu", "--cpu-precision", "float32").cpu_precision == "float32"
    # The README's cpu_long runs were started as the cpu recipe with these three changes.
    assert recipe("--recipe", "cpu", "--wd", "1e-3", "--epochs", "53", "--no-validate-last-weights") == \
        fer_train.RECIPES["cpu_long"] != fer_train.RECIPES["cpu"]
    with pytest.raises(SystemExit):
        recipe("--cpu-precision", "float16")


def test_the_training_bench_reads_a_recipe_with_trains_options():
    import bench_train_loop  # bench/, on the path via conftest

    checked = fer_train._checked_recipe
    assert bench_train_loop.recipe_from_spec("cpu_long_aa") == checked(fer_train.RECIPES["cpu_long_aa"])
    three = bench_train_loop.recipe_from_spec("cpu_long_aa --antialiased-blocks 3 --epochs 45")
    assert three == checked(fer_train.RECIPES["cpu_long_aa"].replace(model_kwargs={"antialiased_blocks": 3},
                                                                     num_epochs=45))
    with pytest.raises(SystemExit):  # train's parser says what is wrong
        bench_train_loop.recipe_from_spec("cpu_long_aa --antialiased-blocks three")


def test_the_augmentation_is_a_recipe_setting(synthetic_cache, tmp_path):
    from ferlib.cli import build_parser
    from ferlib.transforms import FERPLUS_AUGMENTATION

    args = build_parser().parse_args(["train", "--data", "d", "--out", "o", "--recipe", "synthetic",
                                      "--augment", "max_angle=0, max_skew=0,max_scale=1,flip=false"])
    recipe = fer_train.recipe_from_args(args)
    assert recipe.augmentation == {"max_angle": 0.0, "max_skew": 0.0, "max_scale": 1.0, "flip": False}
    for bad, message in (("max_angle", "give NAME=VALUE"), ("flip=maybe", "flip takes true or false"),
                         ("max_angle=x", "max_angle takes a number")):
        with pytest.raises(FERError, match=message):
            fer_train.recipe_from_args(build_parser().parse_args(["train", "--data", "d", "--out", "o", "--augment", bad]))
    with pytest.raises(FERError, match="augmentation has no setting max_rotation; its settings are: max_shift"):
        fer_train.train(synthetic_cache, tmp_path / "bad", augmentation={"max_rotation": 5}, num_epochs=1, **TINY)
    assert not (tmp_path / "bad" / "config.json").exists()
    changed = fer_train._augmentation(recipe)
    assert (changed.max_angle, changed.max_shift, changed.flip) == (0.0, FERPLUS_AUGMENTATION.max_shift, False)
    fer_train.train(synthetic_cache, tmp_path / "run", augmentation={"max_angle": 0.0}, num_epochs=1, **TINY)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["augmentation"] == {"max_angle": 0.0}
    # --augment changes the named recipe's distortion setting by setting; whole_pixels is a switch.
    args = build_parser().parse_args(["train", "--data", "d", "--out", "o", "--recipe", "cpu",
                                      "--augment", "max_shift=0.1,whole_pixels=false,erase=0.5", "--normalization", "ferplus"])
    recipe = fer_train.recipe_from_args(args)
    assert recipe.augmentation == {**fer_train.RECIPES["cpu"].augmentation, "max_shift": 0.1, "whole_pixels": False,
                                   "erase": 0.5}
    with pytest.raises(FERError, match="erase is a probability"):  # before anything is written
        fer_train.train(synthetic_cache, tmp_path / "erase", augmentation={"erase": 2.0}, num_epochs=1, **TINY)
    assert not (tmp_path / "erase").exists()
    with pytest.raises(FERError, match="mixup blends targets.*multi_target"):
        fer_train.train(synthetic_cache, tmp_path / "mixup", augmentation={"mixup": 0.2}, mode="multi_target",
                        num_epochs=1, **TINY)
    assert not (tmp_path / "mixup").exists()
    assert recipe.normalization == "ferplus" and fer_train.RECIPES["cpu"].normalization == "standard"


def test_a_run_is_used_with_the_normalisation_it_was_trained_with(synthetic_cache, tmp_path):
    from ferlib.evaluate import evaluate_run
    from ferlib.serving import FacePredictor, package_run, read_archive
    from ferlib.transforms import preprocess

    with pytest.raises(FERError, match="unknown normalization 'zscore'"):
        fer_train.train(synthetic_cache, tmp_path / "bad", normalization="zscore", num_epochs=1, **TINY)
    assert not (tmp_path / "bad" / "config.json").exists()
    result = fer_train.train(synthetic_cache, tmp_path / "run", normalization="standard", num_epochs=1, **TINY)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["normalization"] == "standard"
    data = fer_data.load_cache(synthetic_cache)
    val_faces = majority_faces(data, "val")
    exported = fer_model.load_exported(tmp_path / "run")
    accuracy = {n: validation_accuracy(exported, val_faces, 32, [mx.cpu()], normalization=n)
                for n in ("standard", "ferplus")}
    assert accuracy["standard"] == pytest.approx(result["best_val_acc"])
    # The other normalisation is another input: other answers (a one-epoch network may still rank alike).
    probabilities = {n: predict_probabilities(exported, val_faces.images[:16], val_faces.boxes[:16], 32,
                                              normalization=n)[0] for n in ("standard", "ferplus")}
    assert np.abs(probabilities["standard"] - probabilities["ferplus"]).max() > 1e-3
    evaluation = evaluate_run(tmp_path / "run", synthetic_cache, split="val", save=False)
    assert evaluation["normalization"] == "standard" and evaluation["accuracy"] == pytest.approx(accuracy["standard"])
    predictor = FacePredictor(tmp_path / "run")
    crops = list(data.images[:3])
    assert predictor.normalization == "standard"
    assert np.array_equal(predictor.network_input(crops), preprocess(np.stack(crops), size=32,
                                                                      normalization="standard"))
    _, settings, _ = read_archive(package_run(tmp_path / "run", tmp_path / "fer.mar"))
    assert settings["preprocessing"]["normalization"] == "standard"
    overridden = FacePredictor(tmp_path / "run", settings={"preprocessing": {"normalization": "ferplus"}})
    assert overridden.normalization == "ferplus"
