"""The model server's handler: photos in, every face with its emotions out.

Multi Model Server (MMS 1.1) imports the archive's entry module and calls
``handle(data, context)``: once with ``data=None`` when a worker starts
(:func:`handle` then loads the network and every constant), then with a list
of requests, one per HTTP request of an MMS batch. Each request is a dict of
its inputs: the raw body under ``"body"``, or the fields of a multipart form,
plus the query parameters.

For each request the handler decodes the image (:func:`decode_image`), finds
the faces (:mod:`.faces`), cuts each out as FER2013 frames its crops, and
then all faces of all requests go through :func:`ferlib.transforms.preprocess`
(the training code itself) and the network in one forward pass. The answer
of each request is JSON::

    {"faces": [{"box": [x, y, w, h], "emotion": "happiness",
                "probabilities": {"neutral": 0.01, "happiness": 0.95, ...}}, ...],
     "image_size": [width, height], "whole_image": false}

faces largest first, ``[]`` when there is none. With the header
``X-Whole-Image: 1``, a form field ``whole_image=1`` or the query parameter
``whole_image=1`` (on ``/invocations?model_name=fer&whole_image=1``: MMS 1.1
drops the query string of ``/predictions/fer``) the whole image is one face,
for inputs that are already crops such as FER images. Bad input gets a
4xx answer ``{"code": ..., "type": ..., "message": ...}`` for that request
alone; the worker carries on.

:class:`FacePredictor` is the same logic without a server (``python -m ferlib
predict --run``, tests). This file is copied into the model archive with the
ferlib modules it imports, so it must import nothing else from ferlib.
"""
import io
import json
import logging
import os
import time

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .. import run
from ..errors import FERError
from ..labels import EMOTIONS
from ..transforms import (DEFAULT_NORMALIZATION, check_normalization, normalization_of, preprocess,
                          to_grey_uint8)
from ..formats import IMAGE_SIDE
from .faces import DEFAULT_DETECTOR, FaceDetector, clip_box, cut_face, whole_image_face

import mxnet as mx  # noqa: E402  (the package __init__ has restored numpy's aliases)

logger = logging.getLogger(__name__)


#: Request limits (stored in the archive's serving.json).
DEFAULT_LIMITS = {
    # Decoded pixels per image: a small file can claim a huge image (decompression bomb).
    "max_pixels": 40_000_000,
    # Faces per image; the largest are kept (the answer counts the others). Bounds the work of one request.
    "max_faces": 32,
    # Longest side: a 1 x 40,000,000 PNG is within max_pixels, yet costs seconds and a gigabyte to decode.
    "max_side": 12_000,
}
#: Pillow modes the handler reads, and how each becomes an array to_grey_uint8 takes.
_MODE_CONVERSION = {
    "L": None, "RGB": None, "RGBA": None,
    "1": "L", "P": "RGBA", "PA": "RGBA", "LA": "L", "La": "L",
    "RGBX": "RGB", "RGBa": "RGBA", "CMYK": "RGB", "YCbCr": "RGB",
    "I;16": None, "I;16L": None, "I;16B": None, "I;16N": None, "I": None,
}
#: Values of the whole-image option that mean yes, and no; anything else is refused.
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")
#: Request fields that are options, never the image (MMS adds model_name on /invocations).
OPTION_FIELDS = ("whole_image", "model_name")
WHOLE_IMAGE_HEADER = "X-Whole-Image"


class RequestError(FERError):
    """Bad input in one request: answered with ``status`` and a JSON message."""

    def __init__(self, message, status=400, kind="BadRequest"):
        super().__init__(message)
        self.status, self.kind = status, kind

    def to_json(self):
        return {"code": self.status, "type": self.kind, "message": str(self)}


def decode_image(data, max_pixels=DEFAULT_LIMITS["max_pixels"], max_side=DEFAULT_LIMITS["max_side"], grey=False):
    """Decode image bytes into an upright Pillow image in L, RGB, RGBA or 16/32-bit grey mode.

    Honours the EXIF orientation. ``grey``: a colour JPEG is decoded straight to its luma
    (mode L), which the network sees anyway, skipping the colour conversion. Raises
    :class:`RequestError` (400 empty, truncated or corrupt, 413 too many pixels or too long
    a side, 415 not an image or an unsupported mode), whatever the decoder raises.
    """
    if isinstance(data, str):
        raise RequestError("the request holds text, not image bytes: send the image file itself "
                           "(Content-Type application/octet-stream or image/*)", 415, "UnsupportedMediaType")
    if not isinstance(data, (bytes, bytearray)):
        raise RequestError(f"the request holds {type(data).__name__} data, not image bytes", 415,
                           "UnsupportedMediaType")
    if len(data) == 0:
        raise RequestError("empty request body: send an image (JPEG, PNG, BMP, GIF, WebP or TIFF)", 400,
                           "EmptyBody")
    try:
        image = Image.open(io.BytesIO(bytes(data)))
    except Image.DecompressionBombError as err:
        raise RequestError(f"image too large: {err}", 413, "ImageTooLarge") from None
    except UnidentifiedImageError:
        raise RequestError(f"the {len(data)} bytes sent are not an image Pillow can read "
                           "(JPEG, PNG, BMP, GIF, WebP, TIFF)", 415, "NotAnImage") from None
    except MemoryError:
        raise
    except Exception as err:  # OSError, ValueError, SyntaxError, NotImplementedError (DDS)...
        raise RequestError(f"cannot read the image header: {type(err).__name__}: {err}", 400,
                           "CorruptImage") from None
    width, height = image.size
    if width * height > max_pixels:
        raise RequestError(f"image of {width} x {height} = {width * height:,} pixels is larger than "
                           f"the limit of {max_pixels:,}", 413, "ImageTooLarge")
    if max(width, height) > max_side:
        raise RequestError(f"image of {width} x {height} pixels has a side longer than the limit of "
                           f"{max_side:,}", 413, "ImageTooLarge")
    if image.mode not in _MODE_CONVERSION:
        raise RequestError(f"{image.format} image in mode {image.mode!r} is not supported; send 8/16-bit "
                           "grey, RGB(A), palette or CMYK", 415, "UnsupportedMode")
    if grey and image.format == "JPEG" and image.mode in ("RGB", "YCbCr"):
        image.draft("L", image.size)  # same size: only the colour planes are skipped
    # Some libraries (gluoncv.data, for one) switch on ImageFile.LOAD_TRUNCATED_IMAGES for the
    # whole process, which would make a cut-off upload decode as a half-grey image.
    accept_truncated, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
    try:
        image.load()
    except MemoryError:
        raise
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError... on broken data
        raise RequestError(f"the {image.format} image is truncated or corrupt ({err})", 400,
                           "CorruptImage") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = accept_truncated
    try:
        image = ImageOps.exif_transpose(image)
    except MemoryError:
        raise
    except Exception:  # a malformed EXIF block: keep the stored orientation
        logger.warning("ignoring unreadable EXIF orientation", exc_info=True)
    target = _MODE_CONVERSION[image.mode]
    if target == "RGBA" and image.mode == "P" and "transparency" not in image.info:
        target = "RGB"
    try:
        return image.convert(target) if target else image
    except MemoryError:
        raise
    except Exception as err:
        raise RequestError(f"cannot convert the {image.format} image: {type(err).__name__}: {err}", 400,
                           "CorruptImage") from None


def to_grey(image):
    """A decoded Pillow image as a 2-D uint8 array (through ferlib.transforms.to_grey_uint8)."""
    array = np.asarray(image)
    if image.mode.startswith("I;16"):
        array = array.astype(np.uint16)  # also turns big-endian I;16B native
    elif image.mode == "I":  # 32-bit integer grey, in practice 16-bit data
        array = (np.clip(array, 0, 65535) if array.max() > 255 else array * 257).astype(np.uint16)
    return to_grey_uint8(array)


def softmax(logits):
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def serving_settings(input_size, emotions=EMOTIONS, detector=None, limits=None, normalization=DEFAULT_NORMALIZATION):
    """The settings a served model needs besides its weights (the archive's serving.json)."""
    return {
        "input_size": int(input_size),
        "emotions": list(emotions),
        "preprocessing": {
            "function": "ferlib.transforms.preprocess",
            "normalization": check_normalization(normalization),
            "face_resolution": IMAGE_SIDE,
            "grey": "ferlib.transforms.to_grey_uint8",
        },
        "detector": {**DEFAULT_DETECTOR, **(detector or {})},
        "limits": {**DEFAULT_LIMITS, **(limits or {})},
    }


def _contexts(gpu_id=None):
    if gpu_id is not None and mx.context.num_gpus() > int(gpu_id):
        return mx.gpu(int(gpu_id))
    return mx.cpu()


class FacePredictor:
    """Find the faces in photos and predict their emotions; everything the server does but HTTP.

    Parameters
    ----------
    model_dir : str or Path
        A folder with ``model-symbol.json``, ``model-0000.params``, ``labels.json``
        and, in an archive, ``serving.json``; a training run folder works too
        (its ``config.json`` gives the input size).
    ctx : mx.Context, default cpu
    settings : dict, optional
        Overrides :func:`serving_settings` (``detector``, ``limits``...).
    """

    def __init__(self, model_dir, ctx=None, settings=None):
        self.model_dir = str(run.locate(model_dir))  # "pretrained": the run folder inside ferlib
        self.ctx = ctx or mx.cpu()
        self.settings = self._read_settings(settings)
        self.input_size = self.settings["input_size"]
        # Archives packaged before there was a choice were trained with the FER+ reference's.
        self.normalization = check_normalization(self.settings["preprocessing"].get("normalization",
                                                                                    DEFAULT_NORMALIZATION))
        self.emotions = list(self.settings["emotions"])
        # Archives packaged before a limit existed take its default, once, here.
        self.limits = {**DEFAULT_LIMITS, **self.settings["limits"]}
        # An archive packaged before there was a choice of detector was framed for the Haar cascade.
        self.detector = FaceDetector({"backend": "haar", **self.settings["detector"]})
        self.net = self._load_net()
        # Bind the graph now, so that the first request does not pay for it.
        self.forward(np.zeros((1, 1, self.input_size, self.input_size), np.float32))

    def _path(self, name):
        return os.path.join(self.model_dir, name)

    def _read_json(self, name):
        with open(self._path(name), encoding="utf-8") as f:
            return json.load(f)

    def _read_settings(self, overrides):
        if os.path.isfile(self._path(run.SERVING)):
            settings = self._read_json(run.SERVING)
        elif os.path.isfile(self._path(run.CONFIG)):  # a training run folder
            config = run.read_config(self.model_dir)
            settings = serving_settings(config["input_size"], config.get("emotions", EMOTIONS),
                                        normalization=normalization_of(config))
        else:
            raise FERError(f"{self.model_dir} has neither {run.SERVING} (a model archive) nor "
                           "config.json (a training run folder)")
        for key, value in (overrides or {}).items():
            settings[key] = {**settings[key], **value} if isinstance(value, dict) else value
        if os.path.isfile(self._path(run.LABELS)):
            labels = self._read_json(run.LABELS)
            if list(labels) != list(settings["emotions"]):
                raise FERError(f"{self._path(run.LABELS)} lists {labels}, but the settings say "
                               f"{settings['emotions']}")
        return settings

    def _load_net(self):
        net = run.load_exported(self.model_dir, ctx=self.ctx)
        # Not static_alloc: batches come in every size, and static memory is planned
        # again for each new shape (4-6x slower per call when sizes vary, measured).
        net.hybridize()
        return net

    def forward(self, x):
        """Probabilities (N, 8) of a preprocessed batch (N, 1, S, S)."""
        logits = self.net(mx.nd.array(x, ctx=self.ctx, dtype=np.float32))
        return softmax(logits.asnumpy().astype(np.float64))

    def find_faces(self, grey, whole_image=False):
        """``(boxes, crops)``: reported boxes (inside the image) and 48x48 FER-style crops."""
        boxes, crops, _ = self._faces(grey, whole_image)
        return boxes, crops

    def _faces(self, grey, whole_image=False):
        """:meth:`find_faces` and how many faces beyond ``max_faces`` were left out."""
        if whole_image:
            height, width = grey.shape
            return [[0, 0, width, height]], [whole_image_face(grey)], 0
        found = self.detector.detect(grey)
        dropped = max(0, len(found) - self.limits["max_faces"])
        found = found[: self.limits["max_faces"]]
        boxes = [clip_box(box, grey.shape) for box in found]
        crops = [cut_face(grey, self.detector.crop_box(box)) for box in found]
        return boxes, crops, dropped

    def predict_grey(self, greys, whole_image=False):
        """Results for a list of 2-D uint8 images, all faces in one forward pass.

        ``whole_image`` is one flag or one per image. Returns a list of lists of
        face dicts (box, emotion, probabilities), largest face first.
        """
        results, _ = self._predict_grey(greys, whole_image)
        return results

    def _predict_grey(self, greys, whole_image=False):
        """:meth:`predict_grey` and, per image, the faces left out beyond ``max_faces``."""
        flags = whole_image if isinstance(whole_image, (list, tuple)) else [whole_image] * len(greys)
        found = [self._faces(grey, flag) for grey, flag in zip(greys, flags)]
        crops = [crop for _, image_crops, _ in found for crop in image_crops]
        probabilities = self.probabilities(crops)
        results, start = [], 0
        for boxes, _, _ in found:
            faces = []
            for box, p in zip(boxes, probabilities[start:start + len(boxes)]):
                faces.append({
                    "box": [int(v) for v in box],
                    "emotion": self.emotions[int(np.argmax(p))],
                    "probabilities": {name: round(float(v), 6) for name, v in zip(self.emotions, p)},
                })
            start += len(boxes)
            results.append(faces)
        return results, [dropped for _, _, dropped in found]

    def network_input(self, crops):
        """The network input (N, 1, S, S) of 48x48 uint8 face crops: ferlib.transforms.preprocess, as in training."""
        return preprocess(np.stack(crops), size=self.input_size, normalization=self.normalization)

    def probabilities(self, crops):
        """(N, 8) probabilities of 48x48 uint8 face crops, in one forward pass."""
        if not crops:
            return np.zeros((0, len(self.emotions)))
        return self.forward(self.network_input(crops))

    def predict_bytes(self, payloads, whole_image=False):
        """Answers for encoded images: a list of ``(status, body dict)``, one per payload.

        Bad images get their 4xx answer; the good ones go through the network
        together in one forward pass.
        """
        flags = whole_image if isinstance(whole_image, (list, tuple)) else [whole_image] * len(payloads)
        answers = [None] * len(payloads)
        greys, sizes, where = [], [], []
        for i, payload in enumerate(payloads):
            try:
                if isinstance(payload, RequestError):
                    raise payload
                image = decode_image(payload, self.limits["max_pixels"], self.limits["max_side"], grey=True)
                greys.append(to_grey(image))
                sizes.append(list(image.size))
                where.append(i)
            except RequestError as err:
                answers[i] = (err.status, err.to_json())
            except MemoryError:
                raise
            except Exception as err:  # one bad image never fails the other requests of its batch
                logger.warning("request %d: unreadable image", i, exc_info=True)
                answers[i] = (400, RequestError(f"cannot read the image: {type(err).__name__}: {err}", 400,
                                                "CorruptImage").to_json())
        results, dropped = self._predict_grey(greys, [flags[i] for i in where])
        for i, faces, size, left_out in zip(where, results, sizes, dropped):
            answers[i] = (200, {"faces": faces, "image_size": size, "whole_image": bool(flags[i]),
                                "faces_dropped": left_out})
        return answers


# ---------------------------------------------------------------------------
# MMS entry point

def _is_true(value):
    """Whether an option value means yes; :class:`RequestError` (400) when it is neither yes nor no."""
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8", "replace")
    text = str(value).strip().lower()
    if text not in _TRUE + _FALSE:
        raise RequestError(f"whole_image / {WHOLE_IMAGE_HEADER} is {str(value)[:40]!r}: use 1 or 0 (true/false, "
                           "yes/no, on/off)", 400, "BadOption")
    return text in _TRUE


def _header(context, idx, name):
    try:
        headers = context.get_all_request_header(idx) or {}
    except (AttributeError, IndexError, TypeError):
        return None
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() == name.lower() and not isinstance(value, dict):
            return value
    return None


def parse_request(request, headers=None):
    """``(payload, whole_image)`` of one MMS request dict; payload is a RequestError when unusable.

    The image is the raw body (``"body"``) or, in a multipart form, the largest
    field that is not an option. The whole-image option comes from the
    ``X-Whole-Image`` header (``headers``), a form field or a query parameter
    ``whole_image`` (MMS 1.1 passes query parameters to the handler on
    ``/invocations?model_name=fer&whole_image=1``, not on ``/predictions/fer``).
    """
    try:
        whole_image = _is_true(request.get("whole_image", "")) or _is_true((headers or {}).get("whole_image", ""))
    except RequestError as err:
        return err, False
    if "body" in request:
        return request["body"], whole_image
    fields = [value for name, value in request.items() if name not in OPTION_FIELDS]
    images = [value for value in fields if isinstance(value, (bytes, bytearray)) and value]
    if images:
        return max(images, key=len), whole_image
    if fields:
        return fields[0], whole_image
    return RequestError("no image in the request: send it as the body (Content-Type "
                        "application/octet-stream or image/*) or as a multipart field", 400, "EmptyBody"), whole_image


# ---------------------------------------------------------------------------
# The reply frame, made safe for multi-model-server 1.1.11's front end
#
# The worker answers a batch in one frame (mms/protocol/otf_message_handler.py):
#   int code, int len + message ("Prediction success"), then per request
#   int len + request id, int len + content type, int status, int len + reason phrase,
#   int count + header map, int len + body; then int -1.
# The front end's ModelResponseDecoder parses whatever part of the frame netty has read so
# far and waits for more when a length-prefixed field is incomplete. But it reads each status
# code with an unchecked readInt, and the header map with a readLength whose limit is the bytes
# already there: when a read ends inside either, it throws (IndexOutOfBoundsException,
# "Message size exceed limit: 16" for "application/json"), the front end kills the worker and
# the whole batch gets 500. netty reads in chunks whose sizes are all multiples of 16 (its
# adaptive buffer sizes), starting at the frame's first byte, and a batch's frame is larger than
# the chunk size often enough. So the handler sets no response headers (an empty map reads
# nothing) and pads each JSON body with trailing spaces so that no status code starts on, or
# straddles, a multiple of 16.

#: The message MMS 1.1.11's service.py sends with every successful batch.
MMS_SUCCESS_MESSAGE = "Prediction success"
MMS_READ_ALIGNMENT = 16


def _unsafe_status_offset(offset):
    """Whether a 4-byte status code at ``offset`` can be cut by a read ending at a multiple of 16."""
    return offset % MMS_READ_ALIGNMENT == 0 or offset % MMS_READ_ALIGNMENT > MMS_READ_ALIGNMENT - 4


def pad_for_mms_frame(bodies, phrases, request_ids, message=MMS_SUCCESS_MESSAGE):
    """The JSON ``bodies`` with trailing spaces added so that, in the frame MMS builds from them
    (no content type, no headers), no status code can be cut by a 16-byte-aligned read."""
    offset = 4 + 4 + len(message.encode("utf-8"))
    padded = []
    for idx, (body, phrase) in enumerate(zip(bodies, phrases)):
        status = offset + 4 + len(str(request_ids.get(idx, "")).encode("utf-8")) + 4
        if _unsafe_status_offset(status):  # only the first can be: the message is fixed
            raise FERError(f"cannot place status code {idx} of the MMS reply safely (offset {status})")
        after_status = status + 4 + 4 + len(phrase.encode("utf-8")) + 4 + 4
        # The next record's status sits at the same distance from its start as this one's.
        next_request_id = str(request_ids.get(idx + 1, request_ids.get(idx, ""))).encode("utf-8")
        gap = 4 + len(next_request_id) + 4
        size = len(body.encode("utf-8"))
        while _unsafe_status_offset(after_status + size + gap):
            body, size = body + " ", size + 1
        padded.append(body)
        offset = after_status + size
    return padded


class FERService:
    """The state of one MMS worker: the predictor, created once at start."""

    def __init__(self):
        self.predictor = None
        self.broken = None  # why the model cannot load, when it cannot

    def initialize(self, context):
        properties = context.system_properties
        model_dir = properties.get("model_dir")
        try:
            self.predictor = FacePredictor(model_dir, ctx=_contexts(properties.get("gpu_id")))
        except MemoryError:
            raise
        except Exception as err:
            # Raising here makes MMS restart the worker for ever while requests wait unanswered
            # (as when another registration of the same archive deleted the shared folder):
            # stay up and answer every request with the reason instead.
            detail = (str(err).strip().splitlines() or [""])[0][:300]
            self.broken = (f"the model files in {model_dir} cannot be loaded ({type(err).__name__}: {detail}); "
                           "they were removed or damaged: register the model again")
            logger.error("fer model not loaded: %s", self.broken)
            return
        logger.info("fer model loaded from %s: input %d, batch size %s", model_dir,
                    self.predictor.input_size, properties.get("batch_size"))

    def handle(self, data, context):
        if self.broken:
            answers = [(503, {"code": 503, "type": "ModelUnavailable", "message": self.broken})] * len(data)
            return self._reply(answers, context)
        payloads, flags = [], []
        for idx, request in enumerate(data):
            header = _header(context, idx, WHOLE_IMAGE_HEADER)
            payload, flag = parse_request(request or {}, {"whole_image": header} if header is not None else None)
            payloads.append(payload)
            flags.append(flag)
        start = time.time()
        try:
            answers = self.predictor.predict_bytes(payloads, flags)
        except MemoryError:
            answers = [(507, {"code": 507, "type": "OutOfMemory", "message": "out of memory"})] * len(data)
        except Exception as err:  # never let one batch take the worker down
            logger.exception("prediction failed")
            answers = [(500, {"code": 500, "type": "InternalServerError",
                              "message": f"prediction failed: {type(err).__name__}: {err}"})] * len(data)
        elapsed = (time.time() - start) * 1000.0
        metrics = getattr(context, "metrics", None)
        if metrics is not None:
            metrics.add_time("FERBatchTime", round(elapsed, 2))
            metrics.add_counter("FERBatchRequests", len(data))
            metrics.add_counter("FERBatchFaces", sum(len(b.get("faces", [])) for _, b in answers))
        return self._reply(answers, context)

    @staticmethod
    def _reply(answers, context):
        """Each answer's status on the context, and the JSON bodies MMS sends (see pad_for_mms_frame)."""
        phrases = ["OK" if status == 200 else body.get("type", "Error") for status, body in answers]
        for idx, ((status, _), phrase) in enumerate(zip(answers, phrases)):
            context.set_response_status(status, phrase, idx)
        # No content type: a header would put a map in the frame, which MMS 1.1.11 misreads.
        request_ids = getattr(context, "request_ids", None) or {}
        return pad_for_mms_frame([json.dumps(body) for _, body in answers], phrases, request_ids)


_service = FERService()


def handle(data, context):
    """The MMS entry point (``--handler <module>:handle``)."""
    if _service.predictor is None and _service.broken is None:
        _service.initialize(context)
    if data is None:  # MMS calls once with no data when the worker starts
        return None
    return _service.handle(data, context)
