"""Find faces in a photo and cut them out the way FER2013 crops are framed.

The detector is OpenCV's frontal-face Haar cascade, which ships inside the
``opencv-python(-headless)`` wheel (``cv2.data.haarcascades``): nothing to
download, no GPU.

FER2013 faces are 48x48 crops a little wider than the face itself. Run on the
FER2013 images (upscaled 4x), the same cascade finds a box of median side
40.5 of the 48 pixels, centred (median centre offset 0.00 of the box width
in x, 0.01 in y; 1,881 of the first 3,000 training rows detected). So a
detected box is widened by 48 / 40.5 = 1.185 about its centre
(:data:`FER_FRAMING`) and the crop is brought to the 48x48 resolution of
FER2013 by area averaging; :func:`ferlib.transforms.preprocess` then does
what it does to every training image. :func:`measure_fer_framing` repeats
that measurement on any set of crops.

This module is copied into the model archive, so it imports only OpenCV,
numpy and its own package.
"""
import os

import cv2
import numpy as np

from ..formats import IMAGE_SIDE

#: FER crop side / Haar box side, measured on FER2013 (see the module notes).
FER_FRAMING = 1.185

#: Detector settings (stored in the model archive's config, so a deployment can tune them).
DEFAULT_DETECTOR = {
    "cascade": "haarcascade_frontalface_default.xml",
    # Faces are searched on a copy whose longer side is at most this: the search
    # time grows with the pixels, and 480 px still finds faces of ~30 px in it.
    "max_side": 480,
    "scale_factor": 1.1,
    "min_neighbors": 5,
    # Smallest face side, as a fraction of the shorter image side, and in pixels.
    "min_size_fraction": 0.06,
    "min_size_pixels": 20,
    # Border added (replicated edge pixels, as a fraction of the longer side) so
    # that faces cut by the image edge, e.g. a tight portrait, are still found.
    "pad_fraction": 0.1,
    "framing": FER_FRAMING,
}


def cascade_path(name=DEFAULT_DETECTOR["cascade"]):
    """Full path of one of OpenCV's bundled Haar cascades."""
    path = os.path.join(cv2.data.haarcascades, name)
    if not os.path.isfile(path):
        available = sorted(f for f in os.listdir(cv2.data.haarcascades) if f.endswith(".xml"))
        raise FileNotFoundError(f"OpenCV has no cascade {name!r} in {cv2.data.haarcascades}; "
                                f"available: {', '.join(available)}")
    return path


class FaceDetector:
    """Frontal faces in grey images, largest first.

    Parameters
    ----------
    settings : dict, optional
        Keys of :data:`DEFAULT_DETECTOR`; missing keys take the defaults.
        The cascade is loaded once here (loading takes ~50 ms).
    """

    def __init__(self, settings=None):
        self.settings = {**DEFAULT_DETECTOR, **(settings or {})}
        unknown = set(self.settings) - set(DEFAULT_DETECTOR)
        if unknown:
            raise ValueError(f"unknown detector setting(s) {', '.join(sorted(unknown))}; "
                             f"known: {', '.join(DEFAULT_DETECTOR)}")
        self.cascade = cv2.CascadeClassifier(cascade_path(self.settings["cascade"]))
        if self.cascade.empty():
            raise RuntimeError(f"OpenCV could not load the cascade {self.settings['cascade']}")

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
        found = self.cascade.detectMultiScale(small, scaleFactor=s["scale_factor"],
                                              minNeighbors=s["min_neighbors"], minSize=(min_side, min_side))
        if len(found) == 0:
            return np.zeros((0, 4))
        boxes = np.asarray(found, dtype=np.float64)
        boxes[:, :2] -= pad
        boxes /= scale
        order = np.argsort(-boxes[:, 2] * boxes[:, 3], kind="stable")
        return boxes[order]


def clip_box(box, image_shape):
    """``box`` ``[x, y, w, h]`` cut to the image of shape ``(h, w)``, rounded to pixels."""
    height, width = image_shape[:2]
    x, y, w, h = box
    x0, y0 = max(0, int(round(x))), max(0, int(round(y)))
    x1, y1 = min(width, int(round(x + w))), min(height, int(round(y + h)))
    return [x0, y0, max(0, x1 - x0), max(0, y1 - y0)]


def fer_crop_box(box, framing=FER_FRAMING):
    """The square FER-style crop around a detected face box (may reach outside the image)."""
    x, y, w, h = box
    side = framing * max(w, h)
    return np.array([x + w / 2.0 - side / 2.0, y + h / 2.0 - side / 2.0, side, side])


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


def measure_fer_framing(crops, upscale=4, detector=None):
    """Measure how FER-style crops frame a Haar-detected face.

    Parameters
    ----------
    crops : ndarray (N, 48, 48) of uint8
        Face crops, e.g. FER2013 images.
    upscale : int
        The cascade's smallest window is 24 px, so crops are enlarged first.

    Returns
    -------
    dict
        ``framing`` (median crop side / box side), ``centre_dx`` and
        ``centre_dy`` (median offset of the crop centre from the box centre,
        as a fraction of the box side) and ``detected`` (how many crops had a face).
    """
    cascade = (detector or FaceDetector()).cascade
    ratios, dxs, dys = [], [], []
    for crop in crops:
        side = crop.shape[0]
        big = cv2.resize(crop, (side * upscale, side * upscale), interpolation=cv2.INTER_CUBIC)
        found = cascade.detectMultiScale(big, scaleFactor=1.05, minNeighbors=5,
                                         minSize=(side * upscale // 2, side * upscale // 2))
        if len(found) == 0:
            continue
        x, y, w, h = max(found, key=lambda b: b[2] * b[3]) / upscale
        ratios.append(side / w)
        dxs.append((side / 2 - (x + w / 2)) / w)
        dys.append((side / 2 - (y + h / 2)) / h)
    if not ratios:
        return {"framing": float("nan"), "centre_dx": float("nan"), "centre_dy": float("nan"), "detected": 0}
    return {"framing": float(np.median(ratios)), "centre_dx": float(np.median(dxs)),
            "centre_dy": float(np.median(dys)), "detected": len(ratios)}
