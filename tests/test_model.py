"""The networks: shapes, parameter counts from the architecture arithmetic,
the registry, GluonCV backbones, export / load_exported and run folders."""
import json

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

from ferlib import EMOTIONS, FERError
from ferlib import model as fm
from ferlib.model import (VGG13, adapt_to_faces, describe, export_net, get_model, list_models, load_exported,
                          load_run, num_parameters)

# The paper's VGG13, written out independently of ferlib.model.
PAPER_CONV = [[64, 64], [128, 128], [256, 256, 256], [256, 256, 256]]
PAPER_DENSE = [1024, 1024]


def vgg13_count(input_size=64, width=1.0, batch_norm=False, classes=8, dense=None, conv=PAPER_CONV):
    """Parameter values of the FER+ VGG13 by arithmetic: (trainable, BatchNorm running stats)."""
    def scaled(c):
        return max(1, int(round(c * width)))
    trainable = running = 0
    in_channels, side = 1, input_size
    for block in conv:
        for channels in block:
            c = scaled(channels)
            trainable += 3 * 3 * in_channels * c + (0 if batch_norm else c)
            if batch_norm:
                trainable += 2 * c      # gamma, beta
                running += 2 * c        # moving mean, moving variance
            in_channels = c
        side //= 2
    features = in_channels * side * side
    for units in list(PAPER_DENSE if dense is None else dense) + [None]:
        u = classes if units is None else scaled(units)
        trainable += features * u + u
        features = u
    return trainable, running


def init_forward(net, input_size, batch=1, ctx=mx.cpu()):
    net.initialize(ctx=ctx)
    return net(mx.nd.random.normal(shape=(batch, 1, input_size, input_size), ctx=ctx))


def blocks_of(net, kind):
    found = []
    net.apply(lambda block: found.append(block) if isinstance(block, kind) else None)
    return found


def test_vgg13_parameter_count_is_the_papers():
    net = get_model("vgg13")
    init_forward(net, 64)  # one forward settles the deferred dense input size
    trainable, running = vgg13_count()
    assert running == 0
    assert num_parameters(net) == sum(p.data().size for p in net.collect_params().values()) == trainable
    assert f"{trainable:,}" in VGG13.__doc__  # the number the docstring states


@pytest.mark.parametrize("name, kwargs, input_size", [
    ("vgg13_bn", {}, 64),
    ("vgg13_small", {}, 64),
    ("vgg13_small", {}, 48),
    ("vgg13", {"width": 0.5}, 48),
    ("vgg13_bn", {"width": 0.3, "classes": 5}, 40),
])
def test_vgg13_variant_parameter_counts(name, kwargs, input_size):
    net = get_model(name, input_size=input_size, **kwargs)
    init_forward(net, input_size)
    trainable, running = vgg13_count(input_size, width=net.width, batch_norm=net.batch_norm,
                                     classes=kwargs.get("classes", 8))
    assert num_parameters(net) == trainable + running
    assert num_parameters(net, trainable_only=True) == trainable
    if name in ("vgg13_bn", "vgg13_small") and input_size == 64 and not kwargs:
        assert f"{trainable + running:,}" in VGG13.__doc__


def test_vgg13_half_is_the_cpu_recipes_network():
    """Half the channels, BatchNorm, no dropout after the blocks, one hidden dense layer of 256."""
    net = get_model("vgg13_half", input_size=48)
    init_forward(net, 48)
    trainable, running = vgg13_count(48, width=0.5, batch_norm=True, dense=[512])
    assert num_parameters(net, trainable_only=True) == trainable and num_parameters(net) == trainable + running
    assert [b._units for b in blocks_of(net.classifier, gluon.nn.Dense)] == [256]
    assert [b._rate for b in blocks_of(net, gluon.nn.Dropout)] == [0.5]
    with pytest.raises(FERError, match="dense_units must be positive whole numbers"):
        get_model("vgg13", dense_units=[0])


def test_vgg13_half_wide_doubles_only_the_last_block():
    net = get_model("vgg13_half_wide", input_size=48)
    init_forward(net, 48)
    conv = PAPER_CONV[:3] + [[512, 512, 512]]
    trainable, running = vgg13_count(48, width=0.5, batch_norm=True, dense=[512], conv=conv)
    assert num_parameters(net, trainable_only=True) == trainable and num_parameters(net) == trainable + running
    assert [c._channels for c in blocks_of(net, gluon.nn.Conv2D)] == [32, 32, 64, 64, 128, 128, 128, 256, 256, 256]
    # the blocks come from the constructor, the class attribute stays the paper's
    assert [list(b) for b in VGG13.CONV_BLOCKS] == PAPER_CONV
    for bad in ([[64], []], [], [[64, 0]], [[64, True]]):
        with pytest.raises(FERError, match="conv_blocks must be blocks of positive whole numbers"):
            get_model("vgg13", conv_blocks=bad)


def antialiased_pool_reference(x):
    """Zhang's anti-aliased pooling in numpy: a 2x2 max of stride 1, then a 3x3 mean of stride 2 over the
    map padded by 1, the padding left out of the mean."""
    peaks = np.maximum.reduce([x[:-1, :-1], x[1:, :-1], x[:-1, 1:], x[1:, 1:]])
    rows, cols = (peaks.shape[0] - 1) // 2 + 1, (peaks.shape[1] - 1) // 2 + 1
    return np.array([[peaks[max(0, 2 * i - 1):2 * i + 2, max(0, 2 * j - 1):2 * j + 2].mean() for j in range(cols)]
                     for i in range(rows)])


def largest_change_under_a_one_pixel_shift(pool, size=12):
    """The largest L1 change of ``pool``'s output when a single bright pixel moves one pixel right."""
    changes = []
    for col in range(1, size - 2):
        before, after = np.zeros((1, 1, size, size)), np.zeros((1, 1, size, size))
        before[0, 0, 5, col], after[0, 0, 5, col + 1] = 1, 1
        changes.append(np.abs(pool(mx.nd.array(before)).asnumpy() - pool(mx.nd.array(after)).asnumpy()).sum())
    return max(changes)


def test_antialiased_blocks_blur_the_last_poolings_and_keep_the_network(tmp_path):
    plain = get_model("vgg13_half", input_size=48)
    blurred = get_model("vgg13_half", input_size=48, antialiased_blocks=2)
    x = mx.nd.random.normal(shape=(2, 1, 48, 48))
    for net in (plain, blurred):
        init_forward(net, 48)
    # No parameters and the same map sizes: the weights of one fit the other.
    assert num_parameters(blurred) == num_parameters(plain)
    assert blurred.features(x).shape == plain.features(x).shape == (2, 128, 3, 3)
    strides = [pool._kwargs["stride"] for pool in blocks_of(blurred, gluon.nn.MaxPool2D)]
    assert strides == [(2, 2), (2, 2), (1, 1), (1, 1)]
    layers = list(blurred.features._children.values())
    first = next(i for i, layer in enumerate(layers)
                 if isinstance(layer, gluon.nn.MaxPool2D) and layer._kwargs["stride"] == (1, 1))
    pair = gluon.nn.HybridSequential()
    pair.add(*layers[first:first + 2])
    maps = np.random.RandomState(0).normal(size=(1, 1, 7, 9))
    np.testing.assert_allclose(pair(mx.nd.array(maps)).asnumpy()[0, 0], antialiased_pool_reference(maps[0, 0]),
                               rtol=1e-5, atol=1e-6)
    # What it is for: a one-pixel shift moves a plain pooling's output by a whole cell (or not at all),
    # the anti-aliased one's by less than half of that, whatever the position.
    assert largest_change_under_a_one_pixel_shift(gluon.nn.MaxPool2D(2, 2)) == pytest.approx(2.0)
    assert largest_change_under_a_one_pixel_shift(pair) < 1.0
    # A run folder's config rebuilds it, the exported graph keeps the blur, and Grad-CAM still splits
    # after the last convolution.
    write_run(tmp_path / "run", blurred, model="vgg13_half", model_kwargs={"antialiased_blocks": 2}, input_size=48)
    np.testing.assert_array_equal(load_run(tmp_path / "run")[0](x).asnumpy(), blurred(x).asnumpy())
    export_net(blurred, tmp_path / "exported", 48)
    np.testing.assert_allclose(load_exported(tmp_path / "exported")(x).asnumpy(), blurred(x).asnumpy(),
                               rtol=1e-5, atol=1e-5)
    body, head = fm.saliency_split(blurred)
    np.testing.assert_allclose(head(body(x)).asnumpy(), blurred(x).asnumpy(), rtol=1e-5, atol=1e-5)
    for bad in (5, -1, True, 1.5):
        with pytest.raises(FERError, match="antialiased_blocks must be a whole number from 0 to 4"):
            get_model("vgg13_half", antialiased_blocks=bad)


def face_resnet_count(classes=8, stem=32, stages=((64, 1), (128, 2), (256, 1))):
    """Parameter values of FaceResNet by arithmetic: (trainable, BatchNorm running stats)."""
    trainable, running = 0, 0

    def batch_norm(c):
        nonlocal trainable, running
        trainable, running = trainable + 2 * c, running + 2 * c

    trainable += 9 * 1 * stem + 9 * stem * stem  # the stem's two convolutions, no biases
    batch_norm(stem)
    in_channels = stem
    for channels, blocks in stages:
        for block in range(blocks):
            batch_norm(in_channels)
            batch_norm(channels)
            trainable += 9 * in_channels * channels + 9 * channels * channels
            if block == 0:  # the stride-2 block projects its shortcut
                trainable += in_channels * channels
            in_channels = channels
    batch_norm(in_channels)
    return trainable + in_channels * classes + classes, running


def test_face_resnet_parameter_count_and_shapes():
    net = get_model("face_resnet", input_size=48)
    assert blocks_of(net, gluon.nn.Dense) == [net.output]  # global pooling: no hidden dense layer
    out = init_forward(net, 48, batch=3)
    trainable, running = face_resnet_count()
    assert num_parameters(net, trainable_only=True) == trainable and num_parameters(net) == trainable + running
    assert out.shape == (3, len(EMOTIONS)) and np.isfinite(out.asnumpy()).all()
    # The global pooling takes any input size; the 3 stride-2 stages leave 6x6 at 48.
    assert net.features(mx.nd.zeros((1, 1, 48, 48))).shape == (1, 256, 6, 6)
    assert net(mx.nd.zeros((2, 1, 40, 40))).shape == (2, len(EMOTIONS))
    narrow = get_model("face_resnet", width=0.25, classes=5, stages=((32, 2),))
    init_forward(narrow, 48)
    assert num_parameters(narrow, trainable_only=True) == face_resnet_count(5, stem=8, stages=((8, 2),))[0]
    assert [b._rate for b in blocks_of(net, gluon.nn.Dropout)] == [0.3]
    for bad in ((), ((64,),), ((64, 0),), ((64, True),)):
        with pytest.raises(FERError, match="stages must be"):
            get_model("face_resnet", stages=bad)


def test_a_residual_block_adds_its_shortcut_to_its_branch():
    """With its last convolution at zero a block passes its shortcut on unchanged: the input
    itself, or its 1x1 projection when the block halves the size or changes the channels."""
    x = mx.nd.random.normal(shape=(2, 8, 12, 12))
    same = fm._PreActBlock(8, 8, stride=1)
    same.initialize()
    assert same.shortcut is None
    assert not np.allclose(same(x).asnumpy(), x.asnumpy())
    same.conv2.weight.set_data(mx.nd.zeros_like(same.conv2.weight.data()))
    np.testing.assert_allclose(same(x).asnumpy(), x.asnumpy(), rtol=1e-6)
    down = fm._PreActBlock(8, 16, stride=2)
    down.initialize()
    down.conv2.weight.set_data(mx.nd.zeros_like(down.conv2.weight.data()))
    projected = down.shortcut(mx.nd.relu(down.bn1(x)))
    assert down(x).shape == projected.shape == (2, 16, 6, 6)
    np.testing.assert_allclose(down(x).asnumpy(), projected.asnumpy(), rtol=1e-6)


def test_face_resnet_splits_for_grad_cam_after_its_last_activation():
    net = get_model("face_resnet", width=0.25, input_size=48)
    init_forward(net, 48)
    body, head = fm.saliency_split(net)
    x = mx.nd.random.normal(shape=(2, 1, 48, 48))
    activation = body(x)
    assert activation.shape == (2, 64, 6, 6) and activation.min() >= 0  # after the last ReLU
    np.testing.assert_allclose(head(activation).asnumpy(), net(x).asnumpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name, kwargs, input_size", [
    ("vgg13", {"width": 0.25}, 64),
    ("vgg13", {"width": 0.25}, 48),
    ("vgg13_small", {}, 64),
    ("vgg13_small", {}, 48),
    ("vgg13_bn", {"width": 0.125, "conv_dropout": 0.0, "dense_dropout": 0.0}, 64),
])
def test_output_is_logits_per_emotion(name, kwargs, input_size):
    net = get_model(name, input_size=input_size, **kwargs)
    net.hybridize()
    out = init_forward(net, input_size, batch=3)
    assert out.shape == (3, len(EMOTIONS))
    assert np.isfinite(out.asnumpy()).all()
    # softmax is not part of the net: rows of logits do not sum to 1
    assert not np.allclose(out.asnumpy().sum(axis=1), 1.0)


def test_batch_norm_variant_has_batch_norm_layers():
    plain, bn, small = get_model("vgg13", width=0.25), get_model("vgg13_bn", width=0.25), get_model("vgg13_small")
    assert blocks_of(plain, gluon.nn.BatchNorm) == []
    assert len(blocks_of(bn, gluon.nn.BatchNorm)) == len(blocks_of(bn, gluon.nn.Conv2D)) == 10
    assert len(blocks_of(small, gluon.nn.BatchNorm)) == 10
    # BatchNorm sits between each convolution and its ReLU
    layers = list(bn.features._children.values())
    for i, layer in enumerate(layers):
        if isinstance(layer, gluon.nn.Conv2D):
            assert isinstance(layers[i + 1], gluon.nn.BatchNorm)
            assert isinstance(layers[i + 2], gluon.nn.Activation)
    assert len(blocks_of(plain, gluon.nn.MaxPool2D)) == 4
    assert [b._rate for b in blocks_of(plain, gluon.nn.Dropout)] == [0.25] * 4 + [0.5] * 2


def test_dropout_only_in_training():
    net = get_model("vgg13_small")
    init_forward(net, 64)
    x = mx.nd.random.normal(shape=(2, 1, 64, 64))
    np.testing.assert_array_equal(net(x).asnumpy(), net(x).asnumpy())
    with autograd.record(train_mode=True):
        a, b = net(x), net(x)
    assert not np.allclose(a.asnumpy(), b.asnumpy())


def test_registry_lists_names_on_a_wrong_name():
    names = list_models()
    assert {"vgg13", "vgg13_bn", "vgg13_small", "resnet18_v1b", "mobilenetv2_0.25"} <= set(names)
    with pytest.raises(FERError) as info:
        get_model("vgg16")
    message = str(info.value)
    assert "'vgg16'" in message
    for name in names:
        assert name in message


def test_registry_rejects_unknown_options_and_bad_values():
    with pytest.raises(FERError, match="widht"):
        get_model("vgg13", widht=0.5)
    with pytest.raises(FERError, match="batch_norm"):
        get_model("resnet18_v1b", batch_norm=True)
    with pytest.raises(FERError, match="input_size"):
        get_model("vgg13", input_size=8)
    with pytest.raises(FERError, match="width"):
        get_model("vgg13", width=0)
    with pytest.raises(FERError, match="classes"):
        get_model("vgg13_small", classes=1)
    with pytest.raises(FERError, match="no pretrained weights.*resnet18_v1b"):
        get_model("vgg13", pretrained=True)
    with pytest.raises(FERError, match="no pretrained weights"):
        get_model("face_resnet", pretrained=True)
    with pytest.raises(FERError, match="face_resnet.*no option batch_norm.*stages"):
        get_model("face_resnet", batch_norm=True)
    assert isinstance(get_model("vgg13_small", pretrained=False), VGG13)  # one set of options for all models


def test_registry_defaults_can_be_overridden():
    net = get_model("vgg13_small", width=0.5)
    assert (net.width, net.batch_norm) == (0.5, True)
    assert get_model("vgg13").batch_norm is False


@pytest.mark.parametrize("name", ["resnet18_v1b", "mobilenetv2_0.25"])
def test_gluoncv_backbone_runs_on_grey_faces(name):
    net = get_model(name)
    stems = blocks_of(net, gluon.nn.Conv2D)
    assert stems[0]._in_channels == 1
    out = init_forward(net, 64, batch=2)
    assert out.shape == (2, 8)
    assert net.input_size == 64 and net.classes == 8
    # the first convolution really has one input channel
    assert [p.shape[1] for n, p in net.collect_params().items() if p.name.endswith("weight")][0] == 1


def test_adapt_to_faces_sums_rgb_kernels():
    """A grey image through the adapted stem == that image copied into R, G, B through the original."""
    import gluoncv
    net = gluoncv.model_zoo.get_model("mobilenetv2_0.25", pretrained=False)  # 3 channels, 1000 classes
    net.initialize(mx.init.Xavier())
    grey = mx.nd.random.normal(shape=(2, 1, 64, 64))
    rgb = mx.nd.concat(grey, grey, grey, dim=1)
    net(rgb)
    rgb_features = net.features(rgb).asnumpy()
    rgb_weight = net.features[0].weight.data().asnumpy()
    adapt_to_faces(net, classes=8)
    assert net.features[0].weight.shape == (rgb_weight.shape[0], 1, 3, 3)
    np.testing.assert_allclose(net.features[0].weight.data().asnumpy(), rgb_weight.sum(axis=1, keepdims=True),
                               rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(net.features(grey).asnumpy(), rgb_features, rtol=1e-4, atol=1e-5)
    assert net(grey).shape == (2, 8)  # the new head is initialised and has 8 outputs


def test_pretrained_without_download_is_a_clear_error(monkeypatch):
    import gluoncv

    def no_network(name, **kwargs):
        assert kwargs.get("pretrained") is True
        raise OSError("Failed downloading url https://apache-mxnet.s3-accelerate.dualstack.amazonaws.com/...")
    monkeypatch.setattr(gluoncv.model_zoo, "get_model", no_network)
    with pytest.raises(FERError) as info:
        get_model("resnet18_v1b", pretrained=True)
    message = str(info.value)
    assert "resnet18_v1b" in message and "download" in message and "pretrained=False" in message


def test_pretrained_weights_are_adapted_and_kept(monkeypatch):
    """pretrained=True with the download replaced by a 3-channel ImageNet-shaped net with weights."""
    import gluoncv
    real_get_model = gluoncv.model_zoo.get_model
    imagenet = {}

    def offline_pretrained(name, pretrained=False, ctx=None, root=None, **kwargs):
        assert pretrained is True and "classes" not in kwargs  # ImageNet weights come with 1000 classes
        net = real_get_model(name, pretrained=False, **kwargs)
        net.initialize(mx.init.Xavier(), ctx=ctx)
        net(mx.nd.zeros((1, 3, 64, 64), ctx=ctx))
        imagenet.update({k: p.data().copy() for k, p in net._collect_params_with_prefix().items()})
        return net
    monkeypatch.setattr(gluoncv.model_zoo, "get_model", offline_pretrained)
    net = get_model("resnet18_v1b", pretrained=True)
    fm.initialize(net, mx.cpu())  # only the new head gets values
    out = net(mx.nd.random.normal(shape=(2, 1, 64, 64)))
    assert out.shape == (2, 8)
    adapted = {k: p.data() for k, p in net._collect_params_with_prefix().items()}
    np.testing.assert_allclose(adapted["conv1.weight"].asnumpy(),
                               imagenet["conv1.weight"].sum(axis=1, keepdims=True).asnumpy(), rtol=1e-6, atol=1e-7)
    kept = [k for k in adapted if not k.startswith(("conv1.", "fc."))]
    assert len(kept) > 50
    for k in kept:
        np.testing.assert_array_equal(adapted[k].asnumpy(), imagenet[k].asnumpy())
    assert adapted["fc.weight"].shape == (8, 512) and imagenet["fc.weight"].shape == (1000, 512)


def test_initialize_keeps_own_initializers_and_existing_values():
    net = get_model("vgg13_small")
    fm.initialize(net, mx.cpu())
    net(mx.nd.zeros((1, 1, 64, 64)))
    params = net._collect_params_with_prefix()
    assert (params["features.1.gamma"].data().asnumpy() == 1).all()  # BatchNorm's own init
    assert (params["output.bias"].data().asnumpy() == 0).all()
    before = params["output.weight"].data().asnumpy().copy()
    fm.initialize(net, mx.cpu())  # a second call changes nothing
    np.testing.assert_array_equal(params["output.weight"].data().asnumpy(), before)


def trained_a_little(name="vgg13_small", input_size=64, **kwargs):
    """A net whose BatchNorm statistics have moved away from their start."""
    net = get_model(name, input_size=input_size, **kwargs)
    net.initialize(mx.init.Xavier())
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.01})
    x = mx.nd.random.normal(1.0, 2.0, shape=(4, 1, input_size, input_size))
    for _ in range(2):
        with autograd.record():
            loss = net(x).square().mean()
        loss.backward()
        trainer.step(4)
    return net


@pytest.mark.parametrize("name, input_size", [("vgg13_small", 64), ("vgg13_small", 48), ("mobilenetv2_0.25", 64),
                                              ("face_resnet", 48)])
def test_export_then_load_exported_gives_same_outputs(tmp_path, name, input_size):
    net = trained_a_little(name, input_size)
    symbol_path, params_path = export_net(net, tmp_path, input_size)
    assert symbol_path == tmp_path / "model-symbol.json" and symbol_path.is_file() and params_path.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model-0000.params", "model-symbol.json"]
    exported = load_exported(tmp_path)
    assert isinstance(exported, gluon.SymbolBlock)
    x = mx.nd.random.normal(shape=(3, 1, input_size, input_size))
    np.testing.assert_allclose(exported(x).asnumpy(), net(x).asnumpy(), rtol=1e-5, atol=1e-5)


def test_load_exported_missing_files(tmp_path):
    with pytest.raises(FERError, match="model-symbol.json is missing"):
        load_exported(tmp_path)


def write_run(run_dir, net, model="vgg13_small", model_kwargs=None, input_size=64, emotions=EMOTIONS):
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {"model": model, "model_kwargs": model_kwargs or {}, "input_size": input_size,
              "emotions": list(emotions), "mode": "majority"}
    (run_dir / "config.json").write_text(json.dumps(config))
    net.save_parameters(str(run_dir / "best.params"))
    return config


def test_load_run_restores_the_weights(tmp_path):
    net = trained_a_little("vgg13_small", 48, width=0.125)
    config = write_run(tmp_path / "run", net, model_kwargs={"width": 0.125}, input_size=48)
    loaded, loaded_config = load_run(tmp_path / "run")
    assert loaded_config == config
    assert (loaded.input_size, loaded.width) == (48, 0.125)
    x = mx.nd.random.normal(shape=(2, 1, 48, 48))
    np.testing.assert_array_equal(loaded(x).asnumpy(), net(x).asnumpy())


def test_load_run_takes_the_exported_weights_when_best_params_is_gone(tmp_path):
    """A run folder that ships only its exported graph (as ``pretrained`` does) still gives the Gluon network."""
    net = trained_a_little("vgg13_small", 48, width=0.125)
    write_run(tmp_path / "run", net, model_kwargs={"width": 0.125}, input_size=48)
    get_model("vgg13", width=0.125)  # another network first: the block prefix of the next one differs
    export_net(net, tmp_path / "run", 48)
    (tmp_path / "run" / "best.params").unlink()
    loaded, _ = load_run(tmp_path / "run")
    x = mx.nd.random.normal(shape=(2, 1, 48, 48))
    np.testing.assert_allclose(loaded(x).asnumpy(), net(x).asnumpy(), rtol=1e-5, atol=1e-6)


def test_load_run_errors_are_clear(tmp_path):
    net = trained_a_little("vgg13_small", 48, width=0.125)
    with pytest.raises(FERError, match="does not exist"):
        load_run(tmp_path / "nowhere")
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(FERError, match="config.json is missing"):
        load_run(run)
    (run / "config.json").write_text("{not json")
    with pytest.raises(FERError, match="not valid JSON"):
        load_run(run)
    (run / "config.json").write_text(json.dumps({"model": "vgg13_small", "input_size": 48}))
    with pytest.raises(FERError, match="model_kwargs, emotions"):
        load_run(run)
    write_run(run, net, model_kwargs={"width": 0.125}, input_size=48)
    (run / "best.params").unlink()
    with pytest.raises(FERError, match="best.params is missing"):
        load_run(run)

    write_run(run, net, model_kwargs={"width": 0.125, "classes": 7}, input_size=48)
    with pytest.raises(FERError, match="7 outputs"):
        load_run(run)
    write_run(run, net, model_kwargs={"width": 0.125}, input_size=48, emotions=EMOTIONS[:7])
    with pytest.raises(FERError, match="7 emotions"):
        load_run(run)
    write_run(run, net, model_kwargs={"width": 0.125}, input_size=48, emotions=EMOTIONS[::-1])
    with pytest.raises(FERError, match="order"):
        load_run(run)
    write_run(run, net, model="vgg17", model_kwargs={"width": 0.125}, input_size=48)
    with pytest.raises(FERError, match="unknown model 'vgg17'"):
        load_run(run)
    # weights of another width: the file names itself and the model
    write_run(run, net, model_kwargs={"width": 0.25}, input_size=48)
    with pytest.raises(FERError, match="best.params does not fit model 'vgg13_small'"):
        load_run(run)
    # a 7-class head saved under an 8-class config
    seven = get_model("vgg13_small", width=0.125, classes=7, input_size=48)
    init_forward(seven, 48)
    write_run(run, seven, model_kwargs={"width": 0.125}, input_size=48)
    with pytest.raises(FERError, match="does not fit"):
        load_run(run)


def test_describe_reports_shapes_and_total(tmp_path):
    net = get_model("vgg13_small", input_size=48)
    net.initialize()
    net.hybridize()
    text = describe(net, 48)
    assert "(1, 16, 48, 48)" in text and "(1, 64, 3, 3)" in text and "(1, 8)" in text
    assert f"Total params: {num_parameters(net)}" in text
    assert net._active  # still hybridized afterwards
    assert net(mx.nd.zeros((1, 1, 48, 48))).shape == (1, 8)


def test_describe_needs_initialised_net():
    with pytest.raises(FERError, match="initialize"):
        describe(get_model("vgg13_small"))
