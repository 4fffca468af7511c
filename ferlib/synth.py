"""The built-in synthetic FER-format dataset: drawn faces with crowd-style votes.

``python -m ferlib synth --out DIR --n N --seed S`` writes ``DIR/fer2013.csv``
and ``DIR/fer2013new.csv`` in exactly the format of the real files, so that
every notebook and command runs end to end without the real data (which needs
a Kaggle account). The same seed gives the same files byte for byte. It never
replaces a ``fer2013.csv`` / ``fer2013new.csv`` it did not write itself, such
as the real files, unless told to with ``--overwrite``.

Faces
    Grey 48x48 faces drawn with OpenCV at 4x (192x192) and shrunk with
    ``INTER_AREA``, which anti-aliases every stroke. The expression of each of
    the 8 FER+ emotions shows in the mouth, the eyes and the brows:

    =========== ==================================================================
    neutral     straight mouth, relaxed eyes and brows
    happiness   smile (closed, or open with teeth), smiling narrowed eyes
    surprise    open 'O' mouth, wide eyes, high arched brows
    sadness     frown, brows raised at the inner ends, drooping eyes
    anger       V-shaped lowered brows, narrowed eyes, pressed lips
    disgust     raised upper lip, wrinkled nose, squint, lowered brows
    fear        wide stretched open mouth, wide eyes, raised slanted brows
    contempt    one-sided smirk, one brow a little raised
    =========== ==================================================================

    Every face varies in position, size, rotation (+-15 degrees), face shape,
    eye spacing and size, hair, skin and background tone, lighting gradient,
    contrast, blur and noise, and in how strongly it shows its expression.

Votes
    Ten crowd votes per row over ``VOTE_COLUMNS``: usually most go to the drawn
    emotion and the rest spread onto one or two emotions people confuse it
    with (surprise/fear, anger/disgust, contempt/neutral, ...), with
    occasional single-vote outliers and unknown votes. About 5% of the faces
    are genuinely ambiguous (no emotion has a majority). About 0.5% of the
    rows are "not a face" images (textures, noise, shapes) with mostly ``NF``
    votes and a blank ``Image name``, as FER+ marks the rows it leaves out.

FER2013 labels
    ``fer2013.csv`` carries the original 7-class code of the drawn emotion
    (:data:`FER2013_CODE`). FER2013 has no contempt class: contempt faces get
    0 (Angry), the FER2013 label that the real contempt-majority faces carry
    most often (58 of 148; Disgust comes next with 34). Not-a-face rows get a
    random code, as their original labels are arbitrary.
"""
import argparse
import csv
import hashlib
import io
import json
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from .errors import FERError
from .labels import EMOTIONS, VOTE_COLUMNS, make_targets
from .fileio import atomic_write_bytes, atomic_write_json, file_sha256
from .formats import FER2013_CLASSES, FER2013_HEADER, FERPLUS_HEADER, IMAGE_SIDE

#: Written beside the two files: their SHA-256, so that synth knows which files it may replace.
OWN_FILES_RECORD = ".ferlib-synth.json"
#: Faces are drawn at this multiple of the FER2013 side (:data:`IMAGE_SIDE`) and then shrunk.
SUPERSAMPLE = 4
#: Votes per row, as in FER+.
NUM_VOTES = 10

#: FER2013 code of each FER+ emotion (contempt has none: see the module notes).
FER2013_CODE = {
    "neutral": 6, "happiness": 3, "surprise": 5, "sadness": 4,
    "anger": 0, "disgust": 1, "fear": 2, "contempt": 0,
}

#: Share of each FER+ emotion among the faces: mildly imbalanced like FER+,
#: but every class common enough to learn from a few thousand faces.
CLASS_SHARES = {
    "neutral": 0.20, "happiness": 0.18, "surprise": 0.12, "sadness": 0.12,
    "anger": 0.11, "disgust": 0.08, "fear": 0.10, "contempt": 0.09,
}
#: Share of each usage, in file order.
USAGE_SHARES = {"Training": 0.8, "PublicTest": 0.1, "PrivateTest": 0.1}
#: Share of "not a face" rows (FER+ leaves 173 of 35,887 out, 0.5%).
NOT_A_FACE_SHARE = 0.005
#: Share of faces whose crowd votes have no majority.
AMBIGUOUS_SHARE = 0.05

#: Emotions the crowd confuses each emotion with, most likely first.
CONFUSABLE = {
    "neutral": ("sadness", "contempt", "happiness", "anger"),
    "happiness": ("neutral", "surprise", "contempt"),
    "surprise": ("fear", "happiness", "neutral"),
    "sadness": ("neutral", "fear", "anger", "disgust"),
    "anger": ("disgust", "sadness", "neutral", "contempt"),
    "disgust": ("anger", "contempt", "sadness"),
    "fear": ("surprise", "sadness", "disgust"),
    "contempt": ("neutral", "happiness", "disgust", "anger"),
}

_UNKNOWN = VOTE_COLUMNS.index("unknown")
_NOT_A_FACE = VOTE_COLUMNS.index("NF")
_CLASS_INDEX = {name: i for i, name in enumerate(EMOTIONS)}
# str() of every grey level, to join 2304 of them per row quickly.
_GREY_TEXT = [str(v) for v in range(256)]


class SyntheticFaces(NamedTuple):
    """The rows of a synthetic FER+ set, in file order.

    Attributes
    ----------
    images : ndarray of uint8, shape (N, 48, 48)
    usage : ndarray of str, shape (N,)
        ``Training``, ``PublicTest`` or ``PrivateTest``; all Training rows first.
    names : list of str
        FER+ image names ``fer0000000.png``..., blank for not-a-face rows.
    votes : ndarray of int64, shape (N, 10)
        Crowd votes over ``VOTE_COLUMNS``, 10 per row.
    fer_emotion : ndarray of int64, shape (N,)
        FER2013 7-class code (see :data:`FER2013_CODE`).
    drawn : ndarray of int64, shape (N,)
        Index in ``EMOTIONS`` of the expression drawn, -1 for not-a-face rows.
    """

    images: np.ndarray
    usage: np.ndarray
    names: list
    votes: np.ndarray
    fer_emotion: np.ndarray
    drawn: np.ndarray


# ---------------------------------------------------------------------------
# Expressions. Offsets are in face-local units (1 = half the face width),
# y pointing down, so negative dy raises a feature.

# Brows: raise (whole brow up), inner / outer end dy, arch (mid bulge upwards),
# and for contempt the extra raise of the brow on the smirk side.
_BROWS = {
    "neutral":   dict(raise_=0.00, inner=0.00, outer=0.02, arch=0.06),
    "happiness": dict(raise_=0.03, inner=0.00, outer=0.02, arch=0.08),
    "surprise":  dict(raise_=0.17, inner=0.00, outer=0.05, arch=0.13),
    "sadness":   dict(raise_=0.04, inner=-0.13, outer=0.07, arch=-0.01),
    "anger":     dict(raise_=-0.07, inner=0.16, outer=-0.08, arch=-0.01),
    "disgust":   dict(raise_=-0.08, inner=0.06, outer=0.00, arch=0.02),
    "fear":      dict(raise_=0.14, inner=-0.11, outer=0.06, arch=0.00),
    "contempt":  dict(raise_=0.01, inner=0.00, outer=0.02, arch=0.06, one_side=0.08),
}
# Eyes: openness (1 = relaxed), tilt of the upper lid (positive: inner end
# lower, the angry look), lower-lid push (negative: lower lid pushed up, as in
# a smile or a squint).
_EYES = {
    "neutral":   dict(open_=1.00, lid_tilt=0.00, lower=0.00),
    "happiness": dict(open_=0.65, lid_tilt=0.00, lower=-0.45),
    "surprise":  dict(open_=1.65, lid_tilt=0.00, lower=0.10),
    "sadness":   dict(open_=0.80, lid_tilt=-0.35, lower=0.00),
    "anger":     dict(open_=0.75, lid_tilt=0.55, lower=-0.15),
    "disgust":   dict(open_=0.50, lid_tilt=0.25, lower=-0.40),
    "fear":      dict(open_=1.55, lid_tilt=-0.20, lower=0.10),
    "contempt":  dict(open_=0.95, lid_tilt=0.00, lower=0.00),
}


def _mouth_shape(emotion, rng, k):
    """Mouth parameters for ``emotion`` at strength ``k`` (1 = typical).

    Keys: half-width ``w``; corner dy ``left``/``right``; ``upper``/``lower``
    mid dy of the two lip curves; ``power`` shapes the curves (0.5 an ellipse,
    1 a parabola, small values a box); ``fill``: 'line', 'open', 'teeth'
    (open, upper teeth showing), 'lower_teeth' or 'smirk' (a line hooked up
    at one corner by ``lift``); ``lip``: line thickness factor; ``shift``:
    sideways offset.
    """
    if emotion == "neutral":
        return dict(w=0.30, left=0.0, right=0.0, upper=0.0, lower=0.0, power=1.0, fill="line", lip=1.0)
    if emotion == "happiness":
        if rng.random() < 0.25:  # closed smile
            return dict(w=0.40, left=-0.22 * k, right=-0.22 * k, upper=0.10 * k, lower=0.13 * k,
                        power=1.0, fill="line", lip=1.6)
        return dict(w=0.42, left=-0.14 * k, right=-0.14 * k, upper=0.03 * k, lower=0.30 * k,
                    power=0.7, fill="teeth", lip=1.0)
    if emotion == "surprise":
        return dict(w=0.13 + 0.03 * k, left=0.0, right=0.0, upper=-0.16 * k, lower=0.24 * k,
                    power=0.5, fill="open", lip=1.0)
    if emotion == "sadness":
        return dict(w=0.30, left=0.13 * k, right=0.13 * k, upper=-0.06 * k, lower=-0.05 * k,
                    power=1.0, fill="line", lip=1.1)
    if emotion == "anger":
        # Pressed lips: a short thick line, corners a little down.
        return dict(w=0.26, left=0.05 * k, right=0.05 * k, upper=-0.03 * k, lower=0.0,
                    power=1.0, fill="line", lip=2.2)
    if emotion == "disgust":
        # Upper lip pulled up in the middle, corners down: a squared-off
        # inverted U with the upper teeth showing.
        return dict(w=0.32, left=0.10 * k, right=0.10 * k, upper=-0.22 * k, lower=0.03 * k,
                    power=0.5, fill="teeth", lip=1.0)
    if emotion == "fear":
        return dict(w=0.40, left=0.06 * k, right=0.06 * k, upper=-0.09 * k, lower=0.24 * k,
                    power=0.3, fill="lower_teeth", lip=1.0)
    if emotion == "contempt":
        left_up = rng.random() < 0.5
        # One-sided smirk: flat on one side, hooked up at the other corner.
        return dict(w=0.30, left=0.0, right=0.0, upper=0.0, lower=0.0, power=1.0, fill="smirk",
                    lip=1.4, lift=-0.24 * k, smirk_left=left_up, shift=-0.05 if left_up else 0.05)
    raise FERError(f"unknown emotion {emotion!r}; choose one of: {', '.join(EMOTIONS)}")


# ---------------------------------------------------------------------------
# Drawing helpers: features are point lists in face-local units, mapped to
# canvas pixels by one similarity transform, and drawn with sub-pixel
# precision (cv2 fixed point, 3 fractional bits).

_SHIFT = 3
_ONE = 1 << _SHIFT


class _Face:
    """Canvas plus the face-local -> pixel transform of one face."""

    def __init__(self, canvas, centre, unit, angle_deg):
        self.canvas = canvas
        self.centre = np.asarray(centre, dtype=np.float64)
        self.unit = unit
        a = np.deg2rad(angle_deg)
        self.rot = unit * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])

    def px(self, points):
        xy = np.asarray(points, dtype=np.float64) @ self.rot.T + self.centre
        return np.rint(xy * _ONE).astype(np.int32)

    def width(self, local):
        return max(1, int(round(local * self.unit)))

    def fill(self, points, tone):
        cv2.fillPoly(self.canvas, [self.px(points)], int(tone), cv2.LINE_8, _SHIFT)

    def line(self, points, tone, thickness, closed=False):
        cv2.polylines(self.canvas, [self.px(points)], closed, int(tone), self.width(thickness), cv2.LINE_8, _SHIFT)


@lru_cache(maxsize=64)
def _unit_circle(num, start, stop):
    t = np.linspace(start, stop, num)
    return np.cos(t), np.sin(t)


def _ellipse(cx, cy, rx, ry, num=28, start=0.0, stop=2 * np.pi):
    cos, sin = _unit_circle(num, start, stop)
    return np.stack([cx + rx * cos, cy + ry * sin], axis=1)


@lru_cache(maxsize=16)
def _curve_basis(num):
    s = np.linspace(-1.0, 1.0, num)
    return (s + 1) / 2, np.maximum(1.0 - s * s, 0.0)


def _curve(x0, x1, y0, y1, mid, power, num=15):
    """From (x0, y0) to (x1, y1), bulging by ``mid`` in y at the middle."""
    along, bulge = _curve_basis(num)
    return np.stack([x0 + (x1 - x0) * along, y0 + (y1 - y0) * along + mid * bulge ** power], axis=1)


def _draw_hair(face, aspect, hair_tone, style):
    """Hair behind the head: a short cap, or long hair falling beside the face."""
    if style == "bald":
        return
    top = -aspect
    if style == "long":  # falls beside the face down to the jaw
        face.fill(_ellipse(0.0, top * 0.25, 1.22, aspect * 1.05, start=np.pi, stop=2 * np.pi)
                  .tolist() + [[1.22, aspect * 0.75], [-1.22, aspect * 0.75]], hair_tone)
    else:  # short cap over the top of the head
        face.fill(_ellipse(0.0, top * 0.35, 1.08, aspect * 0.72, start=np.pi, stop=2 * np.pi), hair_tone)


def _draw_hairline(face, rng, aspect, hair_tone, style):
    """Hair over the forehead, drawn after the face so that it covers it."""
    if style == "bald":
        return
    depth = rng.uniform(0.55, 0.75) * aspect  # how far down the forehead
    sweep = rng.uniform(-0.15, 0.15)
    edge = _curve(-0.98, 0.98, -depth * 0.55, -depth * 0.55, -depth * 0.45 + sweep, 1.0, num=17)
    edge[:, 1] += np.linspace(sweep, -sweep, len(edge))
    cap = _ellipse(0.0, -aspect * 0.35, 1.02, aspect * 0.72, start=2 * np.pi, stop=np.pi, num=21)
    face.fill(np.concatenate([edge, cap]), hair_tone)


def _draw_eye(face, side, eye, cfg, k, skin, iris_tone, sclera_tone, line_tone):
    """One eye at (side * spacing, y); side -1 is the person's right (image left)."""
    cx, cy, rx, ry = side * eye["spacing"], eye["y"], eye["rx"], eye["ry"]
    openness = 1.0 + (cfg["open_"] - 1.0) * k
    up = ry * openness
    low = ry * openness * 0.75 * max(0.2, 1.0 + cfg["lower"] * k)
    # Upper lid tilt: positive lowers the inner end (towards the nose).
    tilt = cfg["lid_tilt"] * k * ry
    inner_x, outer_x = cx - side * rx, cx + side * rx
    upper = _curve(inner_x, outer_x, cy + tilt * 0.8, cy - tilt * 0.2, -up, 0.7)
    lower = _curve(outer_x, inner_x, cy, cy, low, 0.8)
    if cfg["lower"] < -0.3:  # smile / squint: the lower lid bows upwards
        lower[:, 1] -= 0.35 * low * _curve_basis(len(lower))[1]
    face.fill(np.concatenate([upper, lower]), sclera_tone)
    iris_r = rx * 0.5
    iris_cy = cy - (up - low) * 0.15
    face.fill(_ellipse(cx + eye["gaze"] * rx * 0.25, iris_cy, iris_r, iris_r, num=20), iris_tone)
    # Lids in skin tone cover the iris outside the eye opening.
    face.fill(np.concatenate([upper, [[outer_x + side * 0.02, cy - ry * 3.5], [inner_x - side * 0.02, cy - ry * 3.5]]]), skin)
    face.fill(np.concatenate([lower, [[inner_x - side * 0.02, cy + ry * 3.0], [outer_x + side * 0.02, cy + ry * 3.0]]]), skin)
    face.line(upper, line_tone, 0.055)
    face.line(lower, line_tone, 0.025)


def _draw_brow(face, side, eye, cfg, k, tone, thickness, extra=0.0):
    """One brow above the eye on ``side``, shaped by ``cfg`` (see ``_BROWS``)."""
    base = eye["y"] - eye["ry"] - 0.16 - (cfg["raise_"] * k + extra)
    inner_x = side * (eye["spacing"] - eye["rx"] * 0.95)
    outer_x = side * (eye["spacing"] + eye["rx"] * 1.25)
    inner_y = base + cfg["inner"] * k
    outer_y = base + cfg["outer"] * k
    face.line(_curve(inner_x, outer_x, inner_y, outer_y, -cfg["arch"] * (0.5 + 0.5 * k), 1.0, num=9), tone, thickness)


def _draw_mouth(face, shape, mouth_y, lip_tone, dark_tone, teeth_tone):
    """The mouth of :func:`_mouth_shape` with its centre line at ``mouth_y``."""
    w, x = shape["w"], shape.get("shift", 0.0)
    left_y, right_y = mouth_y + shape["left"], mouth_y + shape["right"]
    upper = _curve(x - w, x + w, left_y, right_y, shape["upper"], shape["power"])
    lower = _curve(x + w, x - w, right_y, left_y, shape["lower"], shape["power"])
    fill = shape["fill"]
    if fill == "smirk":
        along = np.linspace(-1.0, 1.0, 15)
        towards_lift = -along if shape["smirk_left"] else along
        rise = np.clip((towards_lift + 0.2) / 1.2, 0.0, 1.0) ** 2
        face.line(np.stack([x + w * along, mouth_y + 0.02 + shape["lift"] * rise], axis=1),
                  dark_tone, 0.065 * shape["lip"])
        return
    if fill == "line":
        if shape["lower"] - shape["upper"] > 0.03:  # thin closed smile: fill the lip band
            face.fill(np.concatenate([upper, lower]), lip_tone)
        face.line(upper, dark_tone, 0.065 * shape["lip"])
        return
    outline = np.concatenate([upper, lower])
    face.fill(outline, dark_tone)
    height = shape["lower"] - shape["upper"]
    if fill == "teeth":  # upper teeth band under the upper lip
        band = upper.copy()
        band[:, 1] += 0.35 * max(height, 0.08)
        face.fill(np.concatenate([upper, band[::-1]]), teeth_tone)
    elif fill == "lower_teeth":
        band = lower.copy()
        band[:, 1] -= 0.3 * max(height, 0.08)
        face.fill(np.concatenate([lower, band[::-1]]), teeth_tone)
    face.line(outline, lip_tone, 0.035, closed=True)


def _draw_nose(face, nose, disgust, k, tone, skin_dark):
    """Bridge shadow and nostrils; for disgust, lifted nostrils and wrinkles."""
    y, half = nose["y"], nose["half"]
    lift = 0.07 * k if disgust else 0.0
    # Shadow along one side of the bridge, then the nostrils.
    face.line([[nose["side"] * 0.09, y - 0.42], [nose["side"] * 0.11, y - 0.1]], skin_dark, 0.03)
    face.line(_curve(-half, half, y - lift, y - lift, 0.05, 1.0, num=9), skin_dark, 0.035)
    for side in (-1, 1):
        face.fill(_ellipse(side * half * 0.55, y - lift - 0.01, half * (0.32 + 0.1 * disgust), 0.03, num=12), tone)
    if disgust:  # wrinkles across the bridge and lines from the nose wings
        for j in range(3):
            yy = y - 0.30 - 0.06 * j
            face.line([[-0.1, yy], [0.0, yy - 0.025], [0.1, yy]], skin_dark, 0.035)
        for side in (-1, 1):
            face.line(_curve(side * half * 1.05, side * (half + 0.14), y - lift, y + 0.22, 0.0, 1.0, num=5), skin_dark, 0.03)


def _render_face(emotion, rng, size=IMAGE_SIDE):
    """Draw one grey face showing ``emotion``; uint8 (size, size)."""
    big = size * SUPERSAMPLE
    k = rng.uniform(0.8, 1.2)  # expression strength

    skin = rng.uniform(95, 215)
    bg = rng.uniform(10, 245)
    if abs(bg - skin) < 30:  # keep the head outline visible
        bg = skin + np.sign(bg - skin + 1e-9) * 30
    canvas = np.empty((big, big), dtype=np.uint8)
    # Background: a flat tone with a soft blob or two of clutter.
    canvas[:] = int(np.clip(bg, 0, 255))
    for _ in range(rng.integers(0, 3)):
        centre = tuple(int(v) for v in rng.uniform(0, big, 2))
        axes = tuple(int(v) for v in rng.uniform(0.1, 0.4, 2) * big)
        tone = int(np.clip(bg + rng.uniform(-45, 45), 0, 255))
        cv2.ellipse(canvas, centre, axes, float(rng.uniform(0, 180)), 0, 360, tone, -1)

    aspect = rng.uniform(1.18, 1.38)  # face half-height / half-width
    # Tight crops like FER2013: the face fills most of the frame.
    unit = big * rng.uniform(0.34, 0.40)  # half the face width, in pixels
    centre = big / 2 + rng.uniform(-0.05, 0.05, 2) * big + np.array([0.0, 0.04 * big])
    face = _Face(canvas, centre, unit, rng.uniform(-15, 15))

    hair_tone = rng.uniform(15, 80) if rng.random() < 0.8 else rng.uniform(150, 230)
    style = ("short", "short", "long", "bald")[rng.integers(0, 4)]
    skin_dark = skin * rng.uniform(0.72, 0.82)
    feature_tone = skin * rng.uniform(0.2, 0.4)
    brow_tone = min(hair_tone, skin * 0.45) if hair_tone < skin else skin * rng.uniform(0.35, 0.55)

    # Neck and shoulders, then hair behind the head, then the head.
    face.fill([[-0.45, aspect * 0.6], [0.45, aspect * 0.6], [0.5, aspect * 1.6], [-0.5, aspect * 1.6]], skin_dark)
    face.fill(_ellipse(0.0, aspect * 2.25, 2.0, aspect * 0.75, num=24), rng.uniform(20, 235))
    _draw_hair(face, aspect, hair_tone, style)
    jaw = rng.uniform(0.0, 0.25)  # narrower chin
    outline = _ellipse(0.0, 0.0, 1.0, aspect, num=40)
    lower_half = outline[:, 1] > 0
    outline[lower_half, 0] *= 1.0 - jaw * (outline[lower_half, 1] / aspect) ** 2
    for side in (-1, 1):  # ears
        face.fill(_ellipse(side * 0.97, -0.05, 0.13, 0.24, num=14), skin_dark)
    face.fill(outline, skin)
    # Cheek shading towards the edge of the face.
    face.line(_ellipse(0.0, 0.05, 0.93, aspect * 0.92, num=40, start=0.15 * np.pi, stop=0.85 * np.pi),
              skin * 0.9, 0.08)
    _draw_hairline(face, rng, aspect, hair_tone, style)

    eye = dict(spacing=rng.uniform(0.36, 0.46), y=rng.uniform(-0.18, -0.06), rx=rng.uniform(0.17, 0.22),
               gaze=rng.uniform(-1, 1))
    eye["ry"] = eye["rx"] * rng.uniform(0.42, 0.52)
    eyes_cfg, brows_cfg = _EYES[emotion], _BROWS[emotion]
    shape = _mouth_shape(emotion, rng, k)
    shape["w"] *= rng.uniform(0.9, 1.1)
    sclera = min(255.0, skin + rng.uniform(25, 60))
    for side in (-1, 1):
        _draw_eye(face, side, eye, eyes_cfg, k, skin, feature_tone * 0.6, sclera, feature_tone)
    brow_width = rng.uniform(0.07, 0.10)
    for side in (-1, 1):
        extra = 0.0
        if "one_side" in brows_cfg and (side == -1) == shape.get("smirk_left", False):
            extra = brows_cfg["one_side"] * k
        _draw_brow(face, side, eye, brows_cfg, k, brow_tone, brow_width, extra)

    nose = dict(y=rng.uniform(0.28, 0.38), half=rng.uniform(0.1, 0.14), side=1 if rng.random() < 0.5 else -1)
    _draw_nose(face, nose, emotion == "disgust", k, feature_tone, skin_dark)
    mouth_y = nose["y"] + rng.uniform(0.26, 0.33)
    if emotion == "happiness":  # smile folds from the nose wings round the mouth corners
        t = np.linspace(0.0, 1.0, 7)
        for side in (-1, 1):
            x0, x1 = side * (nose["half"] + 0.07), side * (shape["w"] + 0.06)
            y0, y1 = nose["y"] - 0.02, mouth_y + shape["left"] + 0.03
            fold = np.stack([x0 + (x1 - x0) * t + side * 0.07 * np.sin(np.pi * t), y0 + (y1 - y0) * t], axis=1)
            face.line(fold, skin_dark, 0.03)
    if emotion == "contempt":  # dimple beside the lifted corner
        side = -1 if shape["smirk_left"] else 1
        x = shape["shift"] + side * (shape["w"] + 0.06)
        y = mouth_y + shape["lift"]
        face.line([[x, y - 0.07], [x + side * 0.02, y + 0.04]], skin_dark, 0.03)
    lip_tone = skin * rng.uniform(0.55, 0.75)
    _draw_mouth(face, shape, mouth_y, lip_tone, feature_tone * 0.5, min(255.0, skin + 35))

    # Roundness: the face darkens towards its edges, as a lit 3-D head does.
    # Besides looking right, this spreads the skin over many grey levels, so
    # that histogram equalisation does not blow the sensor noise up.
    depth = rng.uniform(0.15, 0.35)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) * (big / size) + (big / size - 1) / 2
    # face.rot is unit * rotation, so its inverse is its transpose / unit**2.
    local = np.stack([x - face.centre[0], y - face.centre[1]], axis=-1) @ face.rot / face.unit ** 2
    radius2 = local[..., 0] ** 2 + (local[..., 1] / aspect) ** 2
    shading = 1.0 - depth * np.minimum(radius2, 1.1)
    return _photograph(canvas, rng, size, shading.astype(np.float32))


def _photograph(canvas, rng, size, shading=None):
    """Camera effects on a drawn uint8 canvas: blur, shrink, lighting, contrast, noise.

    ``shading`` is an optional (size, size) factor applied after the shrink.
    """
    # Blur at twice the output size: as good as at full size, and four times cheaper.
    half = cv2.resize(canvas, (2 * size, 2 * size), interpolation=cv2.INTER_AREA)
    blurred = cv2.GaussianBlur(half, (0, 0), rng.uniform(0.5, 1.6))
    img = cv2.resize(blurred, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)
    if shading is not None:
        img *= shading
    # Uneven surfaces and light: a smooth random field over the whole image.
    coarse = rng.normal(0.0, rng.uniform(2.0, 10.0), (4, 4)).astype(np.float32)
    img += cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    # Lighting: a linear gradient in a random direction.
    direction = rng.uniform(0, 2 * np.pi)
    ramp = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    gradient = np.cos(direction) * ramp[None, :] + np.sin(direction) * ramp[:, None]
    img *= 1.0 + rng.uniform(0.0, 0.35) * gradient
    # Contrast and brightness around mid grey, then sensor noise.
    img = (img - 128.0) * rng.uniform(0.7, 1.15) + 128.0 + rng.uniform(-25, 25)
    img += rng.normal(0.0, rng.uniform(1.0, 6.0), img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _render_not_a_face(rng, size=IMAGE_SIDE):
    """A 48x48 image with no face: texture, noise, a grating or random shapes."""
    kind = rng.integers(0, 5)
    big = size * SUPERSAMPLE
    if kind == 0:  # smooth random field
        coarse = rng.uniform(0, 255, (rng.integers(3, 9),) * 2).astype(np.float32)
        img = cv2.resize(coarse, (big, big), interpolation=cv2.INTER_CUBIC)
    elif kind == 1:  # grating
        y, x = np.mgrid[0:big, 0:big].astype(np.float32)
        angle, period = rng.uniform(0, np.pi), rng.uniform(8, 50)
        img = 128 + 90 * np.sin((np.cos(angle) * x + np.sin(angle) * y) * 2 * np.pi / period)
    elif kind == 2:  # random shapes
        img = np.full((big, big), rng.uniform(0, 255), dtype=np.float32)
        for _ in range(rng.integers(4, 12)):
            p1 = tuple(int(v) for v in rng.uniform(0, big, 2))
            p2 = tuple(int(v) for v in rng.uniform(0, big, 2))
            tone = float(rng.uniform(0, 255))
            if rng.random() < 0.5:
                cv2.rectangle(img, p1, p2, tone, int(rng.choice([-1, 3, 8])))
            else:
                cv2.line(img, p1, p2, tone, int(rng.integers(2, 12)))
    elif kind == 3:  # checkerboard
        cells = int(rng.integers(2, 9))
        board = (np.indices((cells, cells)).sum(axis=0) % 2).astype(np.float32)
        img = cv2.resize(board * rng.uniform(80, 200) + rng.uniform(0, 50), (big, big),
                         interpolation=cv2.INTER_NEAREST)
    else:  # flat grey with strong noise
        img = np.full((big, big), rng.uniform(30, 220), dtype=np.float32)
        img += rng.normal(0, rng.uniform(20, 60), img.shape).astype(np.float32)
    return _photograph(np.clip(img, 0, 255).astype(np.uint8), rng, size)


# ---------------------------------------------------------------------------
# Rows: usage, classes and votes.

def _split_counts(total, shares):
    """Largest-remainder split of ``total`` by ``shares`` (sums exactly to total)."""
    shares = np.asarray(shares, dtype=np.float64)
    exact = total * shares / shares.sum()
    counts = np.floor(exact).astype(np.int64)
    remainder_order = np.argsort(-(exact - counts), kind="stable")
    counts[remainder_order[: total - counts.sum()]] += 1
    return counts


#: How often the drawn emotion gets 6, 7, 8, 9 or 10 of the votes (unambiguous faces).
_MAIN_VOTE_WEIGHTS = (0.12, 0.18, 0.24, 0.24, 0.22)


def _weighted_index(rng, weights):
    """Index drawn with probability proportional to ``weights`` (cheaper than rng.choice)."""
    cumulative = np.cumsum(weights)
    return int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))


def _crowd_votes(emotion, rng):
    """Ten crowd votes for a face drawn as ``emotion``; most go to it."""
    votes = np.zeros(len(VOTE_COLUMNS), dtype=np.int64)
    main = _CLASS_INDEX[emotion]
    # Two confusable emotions, the first listed most likely (weights 1, 1/2, 1/4, ...).
    confusable = [_CLASS_INDEX[c] for c in CONFUSABLE[emotion]]
    first = confusable.pop(_weighted_index(rng, [0.5 ** i for i in range(len(confusable))]))
    second = confusable[_weighted_index(rng, [0.5 ** i for i in range(len(confusable))])]
    if rng.random() < AMBIGUOUS_SHARE:
        # No majority even after FER+ drops single votes: no count is 1, top <= half.
        pattern = [(5, 5), (4, 4, 2), (4, 3, 3), (5, 3, 2), (3, 3, 2, 2), (4, 2, 2, 2)][rng.integers(0, 6)]
        others = [c for c in range(len(EMOTIONS)) if c not in (main, first, second)]
        columns = [main, first, second, others[rng.integers(0, len(others))]]
        if rng.random() < 0.3:  # sometimes the crowd simply does not know
            columns[len(pattern) - 1] = _UNKNOWN
        for column, count in zip(columns, pattern):
            votes[column] += count
        return votes
    main_votes = 6 + _weighted_index(rng, _MAIN_VOTE_WEIGHTS)  # 6..10 of the 10 votes
    votes[main] = main_votes
    for _ in range(NUM_VOTES - main_votes):
        r = rng.random()
        if r < 0.15:
            votes[_UNKNOWN] += 1
        elif r < 0.17:
            votes[_NOT_A_FACE] += 1
        elif r < 0.30:  # a lone outlier anywhere
            votes[(main + rng.integers(1, len(EMOTIONS))) % len(EMOTIONS)] += 1
        else:
            votes[first if rng.random() < 0.7 else second] += 1
    return votes


def _not_a_face_votes(rng):
    votes = np.zeros(len(VOTE_COLUMNS), dtype=np.int64)
    if rng.random() < 0.8:
        votes[_NOT_A_FACE] = NUM_VOTES
        return votes
    strays = rng.integers(1, 3)
    votes[_NOT_A_FACE] = NUM_VOTES - strays
    for _ in range(strays):
        votes[_UNKNOWN if rng.random() < 0.6 else rng.integers(0, len(EMOTIONS))] += 1
    return votes


def make_faces(n=4000, seed=0):
    """Generate ``n`` synthetic FER+ rows.

    Parameters
    ----------
    n : int
        Number of rows (faces plus about 0.5% not-a-face images).
    seed : int
        Seed of ``numpy.random.default_rng``; the same seed gives the same rows.

    Returns
    -------
    SyntheticFaces
        Images, usage, names, votes, FER2013 codes and the drawn FER+ class,
        in file order (Training, then PublicTest, then PrivateTest).
    """
    n = int(n)
    if n < 1:
        raise FERError(f"the number of faces must be at least 1, got {n}")
    if int(seed) < 0:
        raise FERError(f"the seed must be a non-negative integer, got {seed}")
    rng = np.random.default_rng(seed)
    usages = list(USAGE_SHARES)
    usage_counts = _split_counts(n, list(USAGE_SHARES.values()))
    usage = np.repeat(np.array(usages), usage_counts)
    # Classes per usage by exact shares, so every split has every class.
    drawn = np.concatenate([rng.permutation(np.repeat(np.arange(len(EMOTIONS)),
                                                      _split_counts(count, [CLASS_SHARES[e] for e in EMOTIONS])))
                            for count in usage_counts])
    num_not_faces = int(round(n * NOT_A_FACE_SHARE))
    drawn[rng.choice(n, size=num_not_faces, replace=False)] = -1

    images = np.empty((n, IMAGE_SIDE, IMAGE_SIDE), dtype=np.uint8)
    votes = np.empty((n, len(VOTE_COLUMNS)), dtype=np.int64)
    fer_emotion = np.empty(n, dtype=np.int64)
    names = []
    for i, c in enumerate(drawn):
        if c < 0:
            images[i] = _render_not_a_face(rng)
            votes[i] = _not_a_face_votes(rng)
            fer_emotion[i] = rng.integers(0, len(FER2013_CLASSES))
            names.append("")
        else:
            emotion = EMOTIONS[c]
            images[i] = _render_face(emotion, rng)
            votes[i] = _crowd_votes(emotion, rng)
            fer_emotion[i] = FER2013_CODE[emotion]
            names.append(f"fer{i:07d}.png")
    # The promise the training notebooks rely on: the drawn face is the majority label.
    targets, keep = make_targets(votes, "majority")
    assert np.array_equal(targets[keep].argmax(axis=1), drawn[keep]), "vote generator broke the majority rule"
    return SyntheticFaces(images, usage, names, votes, fer_emotion, drawn)


def _csv_bytes(header, rows):
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode("ascii")


def write_faces(faces, out_dir, overwrite=False):
    """Write the rows of a :class:`SyntheticFaces` as ``fer2013.csv`` + ``fer2013new.csv``.

    Parameters
    ----------
    faces : SyntheticFaces
        Rows from :func:`make_faces`.
    out_dir : str or Path
        Folder to write into (created if missing).
    overwrite : bool
        Replace the two files even if they are not ferlib's synthetic ones.
        Without it, only files this module wrote (recorded by their SHA-256
        in ``out_dir/.ferlib-synth.json``) or files with exactly the new
        content are replaced: real FER files are never lost to a typo in ``--out``.

    Returns
    -------
    (Path, Path)
        Paths of ``fer2013.csv`` and ``fer2013new.csv``.

    Raises
    ------
    FERError
        When a file in the way was not written by this module (and
        ``overwrite`` is False), or the folder cannot be written.
    """
    out_dir = Path(out_dir)
    fer_path, ferplus_path = out_dir / "fer2013.csv", out_dir / "fer2013new.csv"
    fer_rows = ((int(code), " ".join([_GREY_TEXT[v] for v in image.ravel().tolist()]), use)
                for code, image, use in zip(faces.fer_emotion, faces.images, faces.usage))
    ferplus_rows = ((use, name, *row.tolist()) for use, name, row in zip(faces.usage, faces.names, faces.votes))
    contents = {fer_path: _csv_bytes(FER2013_HEADER, fer_rows), ferplus_path: _csv_bytes(FERPLUS_HEADER, ferplus_rows)}
    if not overwrite:
        for path, data in contents.items():
            _check_replaceable(path, data)
    for path, data in contents.items():
        atomic_write_bytes(path, data)
    # Recorded last: a kill before this leaves files that need --overwrite, never the reverse.
    atomic_write_json(out_dir / OWN_FILES_RECORD,
                      {path.name: hashlib.sha256(data).hexdigest() for path, data in contents.items()})
    return fer_path, ferplus_path


def _check_replaceable(path, data):
    """Refuse to replace ``path`` unless it is absent, ours, or already holds ``data``."""
    if not path.exists():
        return
    if path.is_dir():
        raise FERError(f"{path} is a folder; synth writes a file of that name into --out")
    if path.stat().st_size == len(data) and path.read_bytes() == data:
        return  # same content: nothing is lost (also covers files written before the record existed)
    if file_sha256(path) == _own_hashes(path.parent).get(path.name):
        return
    raise FERError(f"{path} already exists and was not written by ferlib synth; refusing to replace it "
                   "(choose another --out, or pass --overwrite to replace it)")


def _own_hashes(out_dir):
    """``{file name: SHA-256}`` of the files synth last wrote into ``out_dir`` (empty if unknown)."""
    try:
        record = json.loads((Path(out_dir) / OWN_FILES_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def write_synthetic(out_dir, n=4000, seed=0, overwrite=False):
    """Generate ``n`` rows with :func:`make_faces` and write them into ``out_dir``.

    Parameters
    ----------
    out_dir : str or Path
        Folder to write ``fer2013.csv`` and ``fer2013new.csv`` into (created
        if missing); synthetic files written earlier are replaced, other
        files only with ``overwrite=True`` (see :func:`write_faces`).
    n, seed : int
        As in :func:`make_faces`.
    overwrite : bool
        Replace the two files whatever they are.

    Returns
    -------
    (Path, Path)
        Paths of ``fer2013.csv`` and ``fer2013new.csv``.
    """
    return write_faces(make_faces(n, seed), out_dir, overwrite=overwrite)


def _synth_command(args):
    faces = make_faces(args.n, args.seed)
    fer_path, ferplus_path = write_faces(faces, args.out, overwrite=args.overwrite)
    usage = ", ".join(f"{np.sum(faces.usage == u)} {u}" for u in USAGE_SHARES)
    print(f"wrote {fer_path} and {ferplus_path}: {len(faces.usage)} rows ({usage}), "
          f"{np.sum(faces.drawn < 0)} not-a-face, seed {args.seed}")
    return 0


def add_commands(subparsers):
    """Add the ``synth`` verb to the ``python -m ferlib`` parser."""
    parser = subparsers.add_parser(
        "synth", help="write a synthetic fer2013.csv + fer2013new.csv (drawn faces, crowd votes)",
        description="Write DIR/fer2013.csv and DIR/fer2013new.csv in the real formats, with drawn "
                    "48x48 faces of the 8 FER+ emotions and crowd-style votes. Same seed, same files.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", required=True, help="folder to write the two CSV files into")
    parser.add_argument("--n", type=int, default=4000, help="number of rows (images)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace fer2013.csv / fer2013new.csv in --out even if synth did not write them")
    parser.set_defaults(func=_synth_command)
