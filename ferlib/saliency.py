"""Where a network looks: Grad-CAM (Selvaraju et al. 2017).

The network is split at the output of its last convolution block (each model says where:
:func:`ferlib.model.saliency_split`), and those feature maps are weighted by the mean gradient of
the class logit.
"""
import cv2
import numpy as np

from .errors import FERError
from .labels import NUM_CLASSES
from .model import saliency_split
from .transforms import DEFAULT_NORMALIZATION, INPUT_SIZE, normalize, warp_faces

import mxnet as mx  # noqa: E402  (ferlib's package __init__ has run first)
from mxnet import autograd  # noqa: E402

def class_activation_gradients(net, x, class_ids=None, ctx=None):
    """Activations of the last convolution block and the gradient of a class logit on them.

    Returns
    -------
    activations, gradients : ndarray float32 (N, K, h, w)
    class_ids : ndarray int64 (N,)
        The explained class per image (default: the predicted one).
    probabilities : ndarray float32 (N, 8)
    """
    body, head = saliency_split(net)
    if ctx is None:
        ctx = next((p.list_ctx()[0] for p in net.collect_params().values() if p._data is not None), mx.cpu())
    x = mx.nd.array(np.asarray(x.asnumpy() if isinstance(x, mx.nd.NDArray) else x, np.float32), ctx=ctx)
    if x.ndim != 4 or x.shape[1] != 1:
        raise FERError(f"Grad-CAM needs network input of shape (N, 1, S, S), got {tuple(x.shape)}")
    n = x.shape[0]
    # The activations become a leaf of their own, so autograd gives their gradient.
    with autograd.predict_mode():
        activations = body(x)
    activations.attach_grad()
    # Training mode on purpose: MXNet's MKL-DNN max pooling keeps the argmax
    # it needs for backward only then (in predict mode its gradient lands on
    # the wrong pixels). The head has no Dropout or BatchNorm (_head_layers),
    # so its forward is the prediction's.
    with autograd.record(train_mode=True):
        logits = head(activations)
        if logits.ndim != 2 or logits.shape[1] != NUM_CLASSES:
            raise FERError(f"the network gives outputs of shape {tuple(logits.shape)}; FER+ needs "
                           f"(N, {NUM_CLASSES}) logits")
        probabilities = mx.nd.softmax(logits, axis=1).asnumpy()
        if class_ids is None:
            class_ids = probabilities.argmax(axis=1)
        class_ids = np.broadcast_to(np.asarray(class_ids, dtype=np.int64), (n,)).copy()
        if n and (class_ids.min() < 0 or class_ids.max() >= NUM_CLASSES):
            raise FERError(f"class ids must be in 0..{NUM_CLASSES - 1}")
        score = mx.nd.pick(logits, mx.nd.array(class_ids, ctx=ctx), axis=1).sum()
    score.backward()
    return activations.asnumpy(), activations.grad.asnumpy(), class_ids, probabilities


def grad_cam(net, x, class_ids=None, ctx=None):
    """Grad-CAM maps of a batch: where the last convolution block sees evidence for a class.

    For the activations ``A`` (N, K, h, w) of the last convolution block and
    the logit ``y_c`` of class ``c``: channel weights ``a_k = mean(dy_c/dA_k)``
    over the map, ``cam = ReLU(sum_k a_k A_k)``, upsampled (bilinear) to the
    input size and divided by its maximum (an all-zero map stays zero).

    Parameters
    ----------
    net : VGG13 or a supported GluonCV network (see :func:`ferlib.model.saliency_split`)
    x : ndarray or NDArray (N, 1, S, S)
        Network input (:func:`ferlib.transforms.preprocess`).
    class_ids : int or (N,) ints, optional
        Class to explain per image; default the predicted class.
    ctx : Context, default the first of the network's

    Returns
    -------
    cams : ndarray float32 (N, S, S), values in [0, 1]
    class_ids : ndarray int64 (N,)
    probabilities : ndarray float32 (N, 8)
    """
    a, g, class_ids, probabilities = class_activation_gradients(net, x, class_ids, ctx)
    size = np.shape(x)[2:]
    weights = g.mean(axis=(2, 3))
    raw = np.maximum((weights[:, :, None, None] * a).sum(axis=1), 0.0)
    cams = np.empty((len(a),) + tuple(size), dtype=np.float32)
    for i in range(len(a)):
        up = np.maximum(cv2.resize(raw[i].astype(np.float32), (size[1], size[0]),
                                   interpolation=cv2.INTER_LINEAR), 0.0)
        peak = up.max()
        cams[i] = up / peak if peak > 0 else 0.0
    return cams, class_ids, probabilities


def grad_cam_faces(net, images, boxes=None, size=INPUT_SIZE, class_ids=None, ctx=None,
                   normalization=DEFAULT_NORMALIZATION):
    """Grad-CAM of raw faces: ``(cams, faces, class_ids, probabilities)``.

    ``faces`` (N, size, size) uint8 are the crops the network saw (the same
    geometry as ``cams``), ready to overlay (:func:`ferlib.plots.plot_grad_cam`);
    ``size`` and ``normalization`` are the run's.
    """
    faces = warp_faces(images, boxes, size)
    cams, class_ids, probabilities = grad_cam(net, normalize(faces, normalization)[:, None], class_ids, ctx)
    return cams, faces, class_ids, probabilities
