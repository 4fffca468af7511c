"""The networks: the FER+ VGG13, a small ResNet and GluonCV backbones adapted to grey faces.

Every network takes a batch of normalised grey faces ``(N, 1, S, S)`` (see
:func:`ferlib.transforms.preprocess`) and returns logits ``(N, 8)`` in the
order of :data:`ferlib.labels.EMOTIONS`; the softmax is part of the loss
(:mod:`ferlib.losses`) and of prediction.

Models are built by name, gluon-cv style::

    net = get_model("vgg13")                  # the network of the FER+ paper
    net = get_model("vgg13_small")            # BatchNorm, 1/4 of the channels: CPU-friendly
    net = get_model("resnet18_v1b", pretrained=True)   # ImageNet start (needs a download)

A training run folder holds ``config.json`` and ``best.params``;
:func:`load_run` rebuilds the network from it, :func:`export_net` writes the
hybridized graph (``model-symbol.json`` + ``model-0000.params``) that
:func:`load_exported` and the model server read back without any Python model
code.
"""
import contextlib
import inspect
import io
import json
import numbers
import os
import tempfile
from pathlib import Path

from . import run
from .errors import FERError
from .utils import as_contexts
from .labels import EMOTIONS, NUM_CLASSES
from .transforms import INPUT_SIZE, normalization_of

import mxnet as mx  # noqa: E402  (ferlib's package __init__ has run first)
from mxnet.gluon import nn  # noqa: E402

#: The smallest input side the networks accept: VGG13 halves it four times.
MIN_INPUT_SIZE = 16


def _is_whole(n, at_least=1):
    return isinstance(n, numbers.Integral) and not isinstance(n, bool) and n >= at_least


def _check_input_size(input_size):
    if not _is_whole(input_size, MIN_INPUT_SIZE):
        raise FERError(f"input_size must be a whole number of pixels >= {MIN_INPUT_SIZE}, got {input_size!r}")
    return int(input_size)


def _check_classes(classes):
    if not _is_whole(classes, 2):
        raise FERError(f"classes must be a whole number >= 2, got {classes!r}")
    return int(classes)


def _check_rate(name, rate):
    if not 0.0 <= rate < 1.0:
        raise FERError(f"{name} must be in [0, 1), got {rate!r}")


def _channel_scaler(width):
    """``scaled(units)``: a channel count times ``width``, at least 1."""
    if not width > 0:
        raise FERError(f"width must be > 0, got {width!r}")
    return lambda units: max(1, int(round(units * width)))


#: Widths of the paper's two hidden dense layers.
DENSE_UNITS = (1024, 1024)


class _FaceNet(nn.HybridBlock):
    """The layout of ferlib's own networks: ``features`` (convolutions), ``classifier`` (pooling or
    dense layers) and ``output`` (the logits); each says where Grad-CAM looks (``saliency_split``)."""

    def hybrid_forward(self, F, x):
        return self.output(self.classifier(self.features(x)))


class VGG13(_FaceNet):
    """The VGG13 network of the FER+ paper (Barsoum et al. 2016).

    Four blocks of 3x3 convolutions (padding 1, ReLU) with 64, 64 | 128, 128 |
    256, 256, 256 | 256, 256, 256 channels, each block followed by 2x2 max
    pooling (stride 2) and dropout; then dense 1024 (ReLU), dropout, dense
    1024 (ReLU), dropout, dense ``classes``. Weights start Glorot-uniform and
    biases zero, as in the paper's reference code.

    With the defaults (64x64 input, 8 classes) the network has
    **8,757,704 parameters**: 3,504,576 in the convolutions and 5,253,128 in
    the dense layers, of which 4,195,328 connect the 256x4x4 feature map to
    the first dense layer. ``vgg13_bn`` (``batch_norm=True``) has 8,759,624
    trainable parameters (no conv biases: -1,920; BatchNorm scales and
    shifts: +3,840) plus 3,840 BatchNorm running statistics, 8,763,464 in
    all; ``vgg13_small`` (BatchNorm, width 0.25) has 551,192 in all. At 48x48
    the first dense layer sees 256x3x3 features and ``vgg13`` has 6,922,696.

    Parameters
    ----------
    classes : int, default 8
        Number of outputs (logits).
    batch_norm : bool, default False
        Add BatchNorm after every convolution, before its ReLU (the
        convolutions then have no bias, which BatchNorm would cancel). Not in
        the paper; it makes training faster and less sensitive to the learning
        rate.
    width : float, default 1.0
        Multiplier of every convolution and hidden dense width (at least 1
        channel each), e.g. 0.25 for fast CPU runs and tests.
    input_size : int, default 64
        Side of the square input. Only the first dense layer depends on it
        (its input size is inferred at the first forward pass); 48 runs on the
        FER2013 pixels without upscaling.
    conv_dropout : float, default 0.25
        Dropout rate after each pooling.
    dense_dropout : float, default 0.5
        Dropout rate after each hidden dense layer.
    dense_units : sequence of int, default (1024, 1024)
        Widths of the hidden dense layers before ``width`` scales them, e.g.
        ``(512,)`` with width 0.5 for one layer of 256.
    conv_blocks : sequence of sequences of int, default :attr:`CONV_BLOCKS`
        Channels of each convolution, block by block, before ``width`` scales
        them; each block ends with the pooling. ``vgg13_half_wide`` doubles the
        last block (512 before scaling, as in Simonyan and Zisserman's VGG13).
    antialiased_blocks : int, default 0
        How many of the last blocks end with an anti-aliased pooling (Zhang
        2019, "Making convolutional networks shift-invariant again"): a 2x2 max
        pooling of stride 1, then a 3x3 average of stride 2 (a box blur where
        the paper blurs with binomial filters); same map sizes, no parameters.
        The ``cpu_long_aa`` recipe uses 2 (``docs/results.md``, ablation).

    Inputs
    ------
    x : NDArray of shape (N, 1, input_size, input_size)

    Outputs
    -------
    NDArray of shape (N, classes): logits.
    """

    #: Channels of the four convolution blocks.
    CONV_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (256, 256, 256))
    def __init__(self, classes=NUM_CLASSES, batch_norm=False, width=1.0, input_size=INPUT_SIZE,
                 conv_dropout=0.25, dense_dropout=0.5, dense_units=DENSE_UNITS, conv_blocks=None,
                 antialiased_blocks=0, **kwargs):
        super().__init__(**kwargs)
        scaled = _channel_scaler(width)
        _check_rate("conv_dropout", conv_dropout)
        _check_rate("dense_dropout", dense_dropout)
        if not all(_is_whole(u) for u in dense_units):
            raise FERError(f"dense_units must be positive whole numbers, got {dense_units!r}")
        conv_blocks = self.CONV_BLOCKS if conv_blocks is None else conv_blocks
        if not (conv_blocks and all(block and all(_is_whole(c) for c in block) for block in conv_blocks)):
            raise FERError(f"conv_blocks must be blocks of positive whole numbers, got {conv_blocks!r}")
        if not (_is_whole(antialiased_blocks, at_least=0) and antialiased_blocks <= len(conv_blocks)):
            raise FERError(f"antialiased_blocks must be a whole number from 0 to {len(conv_blocks)} "
                           f"(the number of blocks), got {antialiased_blocks!r}")
        self.classes = _check_classes(classes)
        self.input_size = _check_input_size(input_size)
        self.batch_norm = bool(batch_norm)
        self.width = float(width)
        glorot = mx.init.Xavier(rnd_type="uniform", factor_type="avg", magnitude=3)
        with self.name_scope():
            self.features = nn.HybridSequential(prefix="features_")
            with self.features.name_scope():
                for index, block in enumerate(conv_blocks):
                    for channels in block:
                        self.features.add(nn.Conv2D(scaled(channels), kernel_size=3, padding=1,
                                                    use_bias=not batch_norm, weight_initializer=glorot))
                        if batch_norm:
                            self.features.add(nn.BatchNorm())
                        self.features.add(nn.Activation("relu"))
                    if index >= len(conv_blocks) - antialiased_blocks:
                        # A plain AvgPool2D, not a fixed depthwise convolution: in bfloat16 the latter
                        # fails in oneDNN's reorder after the weight average is swapped in (MXNet 1.9.1).
                        self.features.add(nn.MaxPool2D(pool_size=2, strides=1),
                                          nn.AvgPool2D(pool_size=3, strides=2, padding=1, count_include_pad=False))
                    else:
                        self.features.add(nn.MaxPool2D(pool_size=2, strides=2))
                    if conv_dropout:
                        self.features.add(nn.Dropout(conv_dropout))
            self.classifier = nn.HybridSequential(prefix="classifier_")
            with self.classifier.name_scope():
                self.classifier.add(nn.Flatten())
                for units in dense_units:
                    # in_units left deferred: it follows from input_size.
                    self.classifier.add(nn.Dense(scaled(units), weight_initializer=glorot),
                                        nn.Activation("relu"))
                    if dense_dropout:
                        self.classifier.add(nn.Dropout(dense_dropout))
            self.output = nn.Dense(classes, weight_initializer=glorot)

    def saliency_split(self):
        """``(body, head)`` for Grad-CAM: ``body(x)`` is the ReLU after the last convolution
        (before the last pooling: 8x8 at a 64 input), ``head(body(x))`` the logits."""
        layers = list(self.features._children.values())
        last_conv = max(i for i, layer in enumerate(layers) if isinstance(layer, nn.Conv2D))
        end = next(i for i in range(last_conv, len(layers)) if isinstance(layers[i], nn.Activation))
        body, head = layers[:end + 1], _head_layers(layers[end + 1:] + [self.classifier, self.output])
        return (lambda x: _run_layers(body, x)), (lambda a: _run_layers(head, a))


class _PreActBlock(nn.HybridBlock):
    """A pre-activation residual block (He et al. 2016): BN-ReLU-conv3x3 twice, and a 1x1
    projection as shortcut when the shape changes."""

    def __init__(self, in_channels, channels, stride, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.bn1 = nn.BatchNorm()
            self.conv1 = nn.Conv2D(channels, 3, strides=stride, padding=1, use_bias=False, in_channels=in_channels)
            self.bn2 = nn.BatchNorm()
            self.conv2 = nn.Conv2D(channels, 3, padding=1, use_bias=False, in_channels=channels)
            self.shortcut = (nn.Conv2D(channels, 1, strides=stride, use_bias=False, in_channels=in_channels)
                             if stride != 1 or in_channels != channels else None)

    def hybrid_forward(self, F, x):
        activated = F.relu(self.bn1(x))
        shortcut = self.shortcut(activated) if self.shortcut is not None else x
        branch = self.conv2(F.relu(self.bn2(self.conv1(activated))))
        return branch + shortcut


class FaceResNet(_FaceNet):
    """A small pre-activation ResNet for 48x48 grey faces.

    A stem of two 3x3 convolutions at full resolution (as VGG13's first
    block), then stages of residual blocks (:class:`_PreActBlock`), each stage
    starting with a stride-2 block, then BatchNorm-ReLU, global average
    pooling, dropout and a dense layer of ``classes``. With the defaults
    (32 | 64 | 128, 128 | 256 channels) it costs about as many multiply-adds
    per 48x48 face as ``vgg13_half`` (163 M against 140 M); the global
    pooling replaces VGG's large first dense layer.

    Parameters
    ----------
    classes : int, default 8
        Number of outputs (logits).
    width : float, default 1.0
        Multiplier of every channel count (at least 1 channel each).
    input_size : int, default 64
        Side of the square input; the global pooling accepts any size.
    stem_channels : int, default 32
        Channels of the two stem convolutions.
    stages : sequence of (channels, blocks), default :attr:`STAGES`
        Each stage halves the resolution in its first block.
    dense_dropout : float, default 0.3
        Dropout rate before the output layer.

    Inputs
    ------
    x : NDArray of shape (N, 1, input_size, input_size)

    Outputs
    -------
    NDArray of shape (N, classes): logits.
    """

    #: Channels and residual blocks of each stage.
    STAGES = ((64, 1), (128, 2), (256, 1))

    def __init__(self, classes=NUM_CLASSES, width=1.0, input_size=INPUT_SIZE, stem_channels=32, stages=None,
                 dense_dropout=0.3, **kwargs):
        super().__init__(**kwargs)
        scaled = _channel_scaler(width)
        _check_rate("dense_dropout", dense_dropout)
        stages = self.STAGES if stages is None else stages
        if not (stages and all(len(stage) == 2 and all(_is_whole(n) for n in stage) for stage in stages)):
            raise FERError(f"stages must be (channels, blocks) pairs of positive whole numbers, got {stages!r}")
        self.classes = _check_classes(classes)
        self.input_size = _check_input_size(input_size)
        self.width = float(width)
        with self.name_scope():
            self.features = nn.HybridSequential(prefix="features_")
            with self.features.name_scope():
                channels = scaled(stem_channels)
                self.features.add(nn.Conv2D(channels, 3, padding=1, use_bias=False, in_channels=1),
                                  nn.BatchNorm(), nn.Activation("relu"),
                                  nn.Conv2D(channels, 3, padding=1, use_bias=False, in_channels=channels))
                for stage_channels, blocks in stages:
                    for block in range(blocks):
                        self.features.add(_PreActBlock(channels, scaled(stage_channels), 2 if block == 0 else 1))
                        channels = scaled(stage_channels)
                self.features.add(nn.BatchNorm(), nn.Activation("relu"))
            self.classifier = nn.HybridSequential(prefix="classifier_")
            with self.classifier.name_scope():
                self.classifier.add(nn.GlobalAvgPool2D(), nn.Flatten())
                if dense_dropout:
                    self.classifier.add(nn.Dropout(dense_dropout))
            self.output = nn.Dense(classes, in_units=channels)

    def saliency_split(self):
        """``(body, head)`` for Grad-CAM: ``body(x)`` is the last ReLU (6x6 at a 48 input),
        ``head(body(x))`` the logits."""
        body, head = list(self.features._children.values()), _head_layers([self.classifier, self.output])
        return (lambda x: _run_layers(body, x)), (lambda a: _run_layers(head, a))


# --------------------------------------------------------------------------
# GluonCV backbones: grey 1-channel stem, ``classes`` outputs.

def _stem_and_head(net):
    """The first convolution and the classifier of a supported GluonCV network.

    Returns ``(stem, replace_stem, replace_head)``: ``replace_stem(block)``
    puts ``block`` in the stem's place, ``replace_head(classes)`` puts a new
    ``classes``-way classifier in place of the old one.
    """
    from gluoncv.model_zoo.mobilenet import MobileNetV2
    from gluoncv.model_zoo.resnetv1b import ResNetV1b

    if isinstance(net, ResNetV1b) and isinstance(net.conv1, nn.Conv2D):
        def replace_stem(block):
            net.conv1 = block

        def replace_head(classes):
            with net.name_scope():
                net.fc = nn.Dense(classes, in_units=net.fc._in_units)
        return net.conv1, replace_stem, replace_head
    if isinstance(net, MobileNetV2):
        def replace_stem(block):
            net.features.register_child(block, "0")  # same key: keeps its place in the sequence

        def replace_head(classes):
            with net.name_scope():
                head = nn.HybridSequential(prefix="output_")
                with head.name_scope():
                    head.add(nn.Conv2D(classes, 1, use_bias=False, prefix="pred_"), nn.Flatten())
            net.output = head
        return net.features[0], replace_stem, replace_head
    raise FERError(f"cannot adapt {type(net).__name__} to grey faces (supported: ResNetV1b, MobileNetV2)")


def adapt_to_faces(net, classes=NUM_CLASSES):
    """Give an ImageNet-style GluonCV network a 1-channel stem and a ``classes``-way head.

    When the stem already has RGB weights (a pretrained network), the grey
    kernel is the sum of the three colour kernels: the adapted network sees a
    grey image exactly as the original saw that image copied into R, G and B.
    (ferlib normalises each face to zero mean and unit spread, not with the
    ImageNet channel statistics, so the ImageNet start still needs fine-tuning
    of the whole network.)
    The new head is initialised (Xavier) on the stem's context in that case, so
    the returned network is complete; otherwise both stay uninitialised and
    ``net.initialize()`` sets them up with the rest.

    Parameters
    ----------
    net : gluoncv ResNetV1b (conv1 stem) or MobileNetV2
    classes : int

    Returns
    -------
    The same ``net``, changed in place.
    """
    stem, replace_stem, replace_head = _stem_and_head(net)
    spec = stem._kwargs
    with net.name_scope():
        grey_stem = nn.Conv2D(stem._channels, kernel_size=spec["kernel"], strides=spec["stride"],
                              padding=spec["pad"], dilation=spec["dilate"], groups=spec["num_group"],
                              use_bias=not spec["no_bias"], in_channels=1)
    rgb_weight = stem.weight._data  # None until the stem has data
    if rgb_weight is not None:
        ctx = stem.weight.list_ctx()
        weight = stem.weight.data(ctx[0])
        grey_stem.initialize(ctx=ctx)
        grey_stem.weight.set_data(weight.sum(axis=1, keepdims=True))
        if not spec["no_bias"]:
            grey_stem.bias.set_data(stem.bias.data(ctx[0]))
    replace_stem(grey_stem)
    replace_head(classes)
    if rgb_weight is not None:
        # Only the new head is uninitialised; leave the loaded weights alone.
        for param in net.collect_params().values():
            if param._data is None and param._deferred_init == ():
                param.initialize(None, ctx, default_init=mx.init.Xavier())  # biases keep 'zeros'
    return net


_DEFAULT_ROOT = os.path.join("~", ".mxnet", "models")


def gluoncv_backbone(name, classes=NUM_CLASSES, pretrained=False, input_size=INPUT_SIZE, ctx=None,
                     root=_DEFAULT_ROOT, **kwargs):
    """A GluonCV model-zoo network for grey ``input_size`` faces and ``classes`` outputs.

    Parameters
    ----------
    name : str
        A GluonCV model name, e.g. ``resnet18_v1b`` or ``mobilenetv2_0.25``.
    classes : int, default 8
    pretrained : bool, default False
        Start from the ImageNet weights of the GluonCV model zoo (downloaded to
        ``root`` on first use; fails with a FERError without internet). The
        RGB stem becomes grey by summing its kernels (see
        :func:`adapt_to_faces`); the 8-class head starts fresh.
    input_size : int, default 64
        Recorded on the network (``net.input_size``); the global pooling makes
        the network work at any size >= 16.
    ctx : Context, default cpu
        Where the pretrained weights are loaded.
    root : str
        Folder of the GluonCV weight files.
    **kwargs
        Passed to the GluonCV constructor (e.g. ``norm_kwargs``).
    """
    import gluoncv

    _check_classes(classes)
    _check_input_size(input_size)
    if pretrained:
        try:
            net = gluoncv.model_zoo.get_model(name, pretrained=True, ctx=ctx or mx.cpu(), root=root, **kwargs)
        except Exception as err:  # download (no network) or a broken weight file
            raise FERError(
                f"{name}: pretrained=True needs the ImageNet weights of the GluonCV model zoo, which are "
                f"downloaded to {os.path.expanduser(root)} on first use; this failed "
                f"({type(err).__name__}: {err}). Connect to the internet once, or use pretrained=False."
            ) from err
    else:
        net = gluoncv.model_zoo.get_model(name, pretrained=False, classes=classes, **kwargs)
    adapt_to_faces(net, classes)
    net.input_size = input_size
    net.classes = classes  # pretrained GluonCV nets carry ImageNet names here
    return net


# --------------------------------------------------------------------------
# Registry

def _options_of(network):
    return tuple(p for p in inspect.signature(network.__init__).parameters
                 if p not in ("self", "kwargs")) + ("pretrained", "ctx")


def _ferlib_builder(name, network=VGG13, **defaults):
    def build(pretrained=False, ctx=None, **kwargs):
        if not pretrained:
            return network(**{**defaults, **kwargs})
        config = run.read_config(run.PRETRAINED, required=("model",))
        if config["model"] != name:
            raise FERError(f"{name} has no pretrained weights: ferlib ships FER+ weights for "
                           f"{config['model']!r} (for an ImageNet start use {', '.join(_BACKBONES)})")
        if kwargs:
            raise FERError(f"the pretrained {name} is built as it was trained; options {sorted(kwargs)} "
                           "cannot change it")
        return load_run(run.PRETRAINED, ctx=ctx)[0]
    build.options = _options_of(network)
    return build


def _backbone(gluoncv_name):
    def build(**kwargs):
        return gluoncv_backbone(gluoncv_name, **kwargs)
    build.__doc__ = f"GluonCV {gluoncv_name} for grey faces (see gluoncv_backbone)."
    build.options = ("classes", "pretrained", "input_size", "ctx", "root", "norm_kwargs")
    return build


_BACKBONES = ("resnet18_v1b", "mobilenetv2_0.25", "mobilenetv2_1.0")
_MODELS = {
    "vgg13": _ferlib_builder("vgg13"),
    "vgg13_bn": _ferlib_builder("vgg13_bn", batch_norm=True),
    "vgg13_small": _ferlib_builder("vgg13_small", batch_norm=True, width=0.25),
    "vgg13_half": _ferlib_builder("vgg13_half", batch_norm=True, width=0.5, dense_units=(512,), conv_dropout=0.0),
    "vgg13_half_wide": _ferlib_builder("vgg13_half_wide", batch_norm=True, width=0.5, dense_units=(512,),
                                      conv_dropout=0.0, conv_blocks=VGG13.CONV_BLOCKS[:3] + ((512, 512, 512),)),
    "face_resnet": _ferlib_builder("face_resnet", FaceResNet),
    **{name: _backbone(name) for name in _BACKBONES},
}


def initialize(net, ctx=None, init=None):
    """Initialise the parameters of ``net`` that have no values yet, on ``ctx``.

    Unlike ``net.initialize`` this also fits pretrained networks: loaded
    weights are kept and only moved to ``ctx``, the fresh layers (the 8-class
    head) are initialised. Layers with their own initializer (VGG13's Glorot
    weights, zero biases, BatchNorm) keep it; the others get ``init``
    (default: He/MSRA, ``Xavier(gaussian, in, 2)``, suited to ReLU networks).

    Returns ``net``.
    """
    ctx = as_contexts(ctx)
    default_init = init or mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2)
    for param in net.collect_params().values():
        if param._data is None and not param._deferred_init:
            param.initialize(None, ctx, default_init)
        else:
            param.reset_ctx(ctx)
    return net


def list_models():
    """Names accepted by :func:`get_model`."""
    return list(_MODELS)


def get_model(name, **kwargs):
    """Build a network by name.

    Parameters
    ----------
    name : str
        One of :func:`list_models`:

        * ``vgg13`` -- the FER+ paper's VGG13 (:class:`VGG13`);
        * ``vgg13_bn`` -- the same with BatchNorm after every convolution;
        * ``vgg13_small`` -- BatchNorm and a quarter of the channels
          (width 0.25): 55 M multiply-adds per 64x64 face instead of 876 M, for CPU;
        * ``vgg13_half`` -- BatchNorm, half the channels, no dropout after the
          convolutions and one hidden dense layer of 256: the CPU recipe's
          network (140 M multiply-adds per 48x48 face); ``pretrained=True``
          gives it with the FER+ weights that ship with ferlib, built as they were
          trained (``antialiased_blocks=2``), for faces prepared with
          ``preprocess(faces, size=48, normalization=net.normalization)``;
        * ``vgg13_half_wide`` -- ``vgg13_half`` with 256 channels in the last
          block instead of 128 (VGG's doubling; 37 M more multiply-adds at 48x48,
          about a fifth slower to train on a CPU);
        * ``face_resnet`` -- a small pre-activation ResNet (:class:`FaceResNet`) at
          about the cost of ``vgg13_half``, global pooling instead of a hidden
          dense layer;
        * ``resnet18_v1b``, ``mobilenetv2_0.25``, ``mobilenetv2_1.0`` --
          GluonCV model-zoo networks with a grey stem and an 8-class head
          (:func:`gluoncv_backbone`; ``pretrained=True`` starts from ImageNet).
    **kwargs
        Options of the model (they override the name's defaults), e.g.
        ``width=0.5`` or ``input_size=48``.

    Returns
    -------
    HybridBlock, not initialised (except pretrained backbones): call
    ``net.initialize(ctx=ctx)``.
    """
    if name not in _MODELS:
        raise FERError(f"unknown model {name!r}; choose one of: {', '.join(_MODELS)}")
    allowed = _MODELS[name].options
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise FERError(f"model {name!r} has no option {', '.join(unknown)}; its options are: {', '.join(allowed)}")
    return _MODELS[name](**kwargs)


# --------------------------------------------------------------------------
# Saliency: where each network's last convolution block ends

def _run_layers(layers, x):
    for layer in layers:
        x = layer(x)
    return x


def _head_layers(blocks):
    """The layers of ``blocks`` in order, containers opened, Dropout left out.

    The head is differentiated in training mode (see :func:`class_activation_gradients`),
    so it must not hold BatchNorm, which would then use batch statistics.
    """
    layers = []
    for block in blocks:
        if isinstance(block, (nn.HybridSequential, nn.Sequential)):
            layers += _head_layers(block._children.values())
        elif isinstance(block, nn.Dropout):
            continue  # identity at prediction
        elif isinstance(block, nn.BatchNorm):
            raise FERError("Grad-CAM: the layers after the last convolution block hold a BatchNorm")
        else:
            layers.append(block)
    return layers


def saliency_split(net):
    """Split ``net`` into ``(body, head)`` at the output of its last convolution block, for Grad-CAM.

    ``head(body(x))`` equals ``net(x)`` at prediction (the head leaves out
    Dropout); ``body(x)`` is the activation map Grad-CAM weighs: for
    :class:`ferlib.model.VGG13` the ReLU after the last convolution (before
    the last pooling: 8x8 at a 64 input), for GluonCV ResNetV1b the output of
    ``layer4``, for MobileNetV2 the last feature map before global pooling.
    """
    if isinstance(net, _FaceNet):
        return net.saliency_split()
    try:
        from gluoncv.model_zoo.mobilenet import MobileNetV2
        from gluoncv.model_zoo.resnetv1b import ResNetV1b
    except ImportError:  # pragma: no cover - gluoncv is a dependency
        ResNetV1b = MobileNetV2 = ()
    if isinstance(net, ResNetV1b):
        body = [net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4]
        head = _head_layers([net.avgpool, net.flat, net.fc])
        return (lambda x: _run_layers(body, x)), (lambda a: _run_layers(head, a))
    if isinstance(net, MobileNetV2):
        layers = list(net.features._children.values())
        pool = max(i for i, layer in enumerate(layers) if isinstance(layer, nn.GlobalAvgPool2D))
        body, head = layers[:pool], _head_layers(layers[pool:] + [net.output])
        return (lambda x: _run_layers(body, x)), (lambda a: _run_layers(head, a))
    raise FERError(f"Grad-CAM does not know where the last convolution block of {type(net).__name__} ends "
                   "(supported: ferlib VGG13, GluonCV ResNetV1b and MobileNetV2)")


# --------------------------------------------------------------------------
# Run folders and exported graphs

def _read_config(run_dir):
    config = run.read_config(run_dir, required=("model", "model_kwargs", "input_size", "emotions"))
    config_path = run.locate(run_dir) / run.CONFIG
    if not isinstance(config["model_kwargs"], dict):
        raise FERError(f"{config_path}: model_kwargs must be a JSON object")
    return config_path, config


def load_run(run_dir, ctx=None):
    """Rebuild the best network of a training run.

    Parameters
    ----------
    run_dir : str or Path
        Folder with ``config.json`` (keys ``model``, ``model_kwargs``,
        ``input_size``, ``emotions``) and ``best.params``, or without it the
        exported ``model-0000.params`` (as in ``"pretrained"``, ferlib's own run).
    ctx : Context or list of Context, default cpu

    Returns
    -------
    net : HybridBlock
        With the weights of ``best.params`` (not hybridized). ``net.normalization`` is the run's
        intensity normalisation: feed it ``preprocess(faces, size=config["input_size"],
        normalization=net.normalization)``.
    config : dict
        The parsed ``config.json``.
    """
    config_path, config = _read_config(run_dir)
    run_dir = run.locate(run_dir)
    params_path = run_dir / run.BEST_PARAMS
    exported = not params_path.is_file() and (run_dir / run.EXPORT_PARAMS).is_file()
    if exported:
        params_path = run_dir / run.EXPORT_PARAMS
    elif not params_path.is_file():
        raise FERError(f"{params_path} is missing: the run saved no best weights (did it finish an epoch?)")
    emotions = list(config["emotions"])
    kwargs = dict(config["model_kwargs"])
    kwargs.pop("pretrained", None)  # the weights come from best.params
    classes = kwargs.get("classes", NUM_CLASSES)
    if len(emotions) != NUM_CLASSES or classes != NUM_CLASSES:
        raise FERError(f"{config_path}: the run has {classes} outputs and {len(emotions)} emotions, "
                       f"but ferlib predicts the {NUM_CLASSES} FER+ emotions {', '.join(EMOTIONS)}")
    if emotions != list(EMOTIONS):
        raise FERError(f"{config_path}: emotions {emotions} are not ferlib's order {list(EMOTIONS)}")
    if kwargs.setdefault("input_size", config["input_size"]) != config["input_size"]:
        raise FERError(f"{config_path}: input_size {config['input_size']} differs from "
                       f"model_kwargs input_size {kwargs['input_size']}")
    net = get_model(config["model"], **kwargs)
    check_params_file(params_path)
    try:
        if exported:
            _load_exported_parameters(net, params_path, as_contexts(ctx))
        else:
            net.load_parameters(str(params_path), ctx=as_contexts(ctx))
    except (AssertionError, mx.base.MXNetError) as err:
        raise FERError(f"{params_path} does not fit model {config['model']!r} with {kwargs}: "
                       f"{_mxnet_reason(err)}") from None
    net.normalization = normalization_of(config)  # how its input must be prepared (ferlib.transforms)
    return net, config


def _load_exported_parameters(net, path, ctx):
    """Load the weights of an exported graph (``model-0000.params``) into a Gluon ``net`` of the same
    architecture. The file names parameters ``arg:<block prefix><name>`` (``aux:`` for BatchNorm
    statistics); the block prefix (``vgg130_``...) depends on how many networks the exporting process
    had built, so names are matched without it."""
    def unprefixed(name):
        return name.split(":", 1)[-1].split("_", 1)[-1]

    arrays = {unprefixed(key): value for key, value in mx.nd.load(str(path)).items()}
    params = {unprefixed(p.name): p for p in net.collect_params().values()}
    missing, extra = sorted(set(params) - set(arrays)), sorted(set(arrays) - set(params))
    if missing or extra:
        raise AssertionError(f"parameters missing from the file: {missing[:3]}, not in the model: {extra[:3]}")
    for name, param in params.items():
        param._load_init(arrays[name], ctx)  # what load_parameters does: checks the shape, fills a deferred one


def check_params_file(path):
    """Raise a one-sentence FERError unless MXNet can read the parameter file ``path``.

    A truncated or damaged file (a copy cut short, a full disk) otherwise
    surfaces as MXNet's multi-line C++ error, which names neither the file
    nor the cause.
    """
    try:
        mx.nd.load(str(path))
    except mx.base.MXNetError:
        raise FERError(f"{path} is damaged or truncated: MXNet cannot read it as a parameter file; "
                       "train the run again or restore the file") from None


def _mxnet_reason(err):
    """The telling line of an MXNet error: the first one that is not part of its C++ traceback."""
    lines = [line.strip() for line in str(err).strip().splitlines()]
    lines = [line for line in lines if line and not line.startswith(("Traceback", "File \""))]
    reason = lines[0] if lines else type(err).__name__
    return reason.removeprefix("MXNetError: ")


def _first_context(net):
    for param in net.collect_params().values():
        try:
            return param.list_ctx()[0]  # also known for deferred-init parameters
        except RuntimeError:  # not initialised
            continue
    return mx.cpu()


def export_net(net, run_dir, input_size=INPUT_SIZE):
    """Hybridize ``net`` and write its graph and weights for deployment.

    Writes ``run_dir/model-symbol.json`` and ``run_dir/model-0000.params``
    (each replaced atomically). The graph has one input, ``data``, of shape
    ``(N, 1, input_size, input_size)``; dropout is off and BatchNorm uses its
    running statistics, as at prediction.

    Returns
    -------
    (symbol_path, params_path) : tuple of Path
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _check_input_size(input_size)
    if not getattr(net, "_active", False):
        net.hybridize()  # keep the flags (static_alloc ...) of an already hybridized net
    # export() needs the cached graph, which the first forward builds.
    net(mx.nd.zeros((1, 1, input_size, input_size), ctx=_first_context(net)))
    tmp_dir = tempfile.mkdtemp(dir=run_dir, prefix=".export-")
    try:
        net.export(os.path.join(tmp_dir, run.EXPORT_PREFIX))
        for name in (run.EXPORT_SYMBOL, run.EXPORT_PARAMS):
            os.replace(os.path.join(tmp_dir, name), run_dir / name)
    finally:
        for leftover in Path(tmp_dir).iterdir():
            leftover.unlink()
        os.rmdir(tmp_dir)
    return run_dir / run.EXPORT_SYMBOL, run_dir / run.EXPORT_PARAMS


def load_exported(run_dir, ctx=None):
    """The exported network of ``run_dir`` as a ``SymbolBlock`` (input ``data``): see
    :func:`ferlib.run.load_exported`. What evaluation and the model server use."""
    return run.load_exported(run_dir, ctx=as_contexts(ctx))


def describe(net, input_size=INPUT_SIZE):
    """Per-layer output shapes and parameter counts of ``net``, as text.

    Runs one forward on a ``(1, 1, input_size, input_size)`` zero batch with
    :meth:`mxnet.gluon.Block.summary` and returns its table (a hybridized net
    is run imperatively for this and hybridized again afterwards).
    The network must be initialised.
    """
    _check_input_size(input_size)
    was_hybridized = getattr(net, "_active", False)
    flags = dict(getattr(net, "_flags", []))
    if was_hybridized:
        net.hybridize(False)
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            net.summary(mx.nd.zeros((1, 1, input_size, input_size), ctx=_first_context(net)))
    except RuntimeError as err:
        if "not been initialized" in str(err) or "has not been initialized" in str(err):
            raise FERError("describe(net) needs an initialised network: call net.initialize() first") from None
        raise
    finally:
        if was_hybridized:
            net.hybridize(True, **flags)
    return buffer.getvalue()


def num_parameters(net, trainable_only=False):
    """Total number of values in the network's parameters (after initialisation).

    ``trainable_only`` leaves out BatchNorm running statistics (``grad_req='null'``).
    """
    return sum(p.data().size for p in net.collect_params().values()
               if not (trainable_only and p.grad_req == "null"))
