"""Ask the model server (or a run folder, without a server) about photos, and draw the answers.

``python -m ferlib predict photo.jpg`` prints each face found by ferlib's pretrained network, with
the handler code of the server run in this process; ``--run runs/NAME`` uses a training run instead;
``--url http://127.0.0.1:8080/predictions/fer`` posts the file to a model server;
``--draw out.png`` writes the photo with the boxes and labels.
"""
import json
from pathlib import Path

import numpy as np

from .. import run
from ..errors import FERError
from .handler import FacePredictor, RequestError, decode_image, to_grey

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_MODEL = "fer"


def _read(path):
    path = Path(path)
    if not path.is_file():
        raise FERError(f"{path}: no such file")
    return path.read_bytes()


def predict_url(images, url=DEFAULT_URL, model=DEFAULT_MODEL, whole_image=False, timeout=60, session=None):
    """Send images to a running server; one ``(status, answer dict)`` per image.

    Parameters
    ----------
    images : list of str, Path or bytes
        Image files, or their bytes.
    url : str
        The server's inference address.
    model : str
        The served model name (``--models NAME=fer.mar``).
    whole_image : bool
        Treat each image as one face crop (sends ``X-Whole-Image: 1``).
    """
    import requests

    session = session or requests.Session()
    endpoint = f"{url.rstrip('/')}/predictions/{model}"
    headers = {"Content-Type": "application/octet-stream"}
    if whole_image:
        # A header, because MMS 1.1 does not pass the query string of /predictions/NAME to the handler.
        headers["X-Whole-Image"] = "1"
    answers = []
    for image in images:
        body = image if isinstance(image, (bytes, bytearray)) else _read(image)
        try:
            # An explicit binary type: with a form type the server would parse the body as a form.
            reply = session.post(endpoint, data=body, headers=headers, timeout=timeout)
        except requests.ConnectionError:
            raise FERError(f"cannot reach the model server at {url}: start it with `multi-model-server --start "
                           "--model-store model_store --models fer=fer.mar --mms-config config.properties`, "
                           "or predict without a server with --run runs/NAME") from None
        try:
            answer = reply.json()
        except ValueError:
            answer = {"code": reply.status_code, "message": reply.text.strip()}
        answers.append((reply.status_code, answer))
    return answers


def predict_local(images, run_dir, whole_image=False, predictor=None):
    """The same answers as :func:`predict_url`, computed here from a run folder (or unpacked archive)."""
    predictor = predictor or FacePredictor(run_dir)
    payloads = []
    for image in images:
        payloads.append(image if isinstance(image, (bytes, bytearray)) else _read(image))
    return predictor.predict_bytes(payloads, whole_image)


def format_answer(name, status, answer):
    """Human-readable lines for one image's answer."""
    if status != 200:
        return f"{name}: error {status}: {answer.get('message', answer)}"
    faces = answer.get("faces", [])
    if not faces:
        hint = "" if answer.get("whole_image") else " (a face crop? use --whole-image)"
        return f"{name}: no face found{hint}"
    lines = [f"{name}: {len(faces)} face{'s' if len(faces) != 1 else ''}"]
    for face in faces:
        ranked = sorted(face["probabilities"].items(), key=lambda kv: -kv[1])
        others = ", ".join(f"{k} {v:.2f}" for k, v in ranked[1:3])
        lines.append(f"  box {face['box']}: {face['emotion']} {ranked[0][1]:.2f} ({others})")
    return "\n".join(lines)


def draw_faces(image, faces, out_path=None):
    """The image with each face's box and top emotion drawn on it (a Pillow RGB image).

    ``image`` is a path, bytes or a Pillow image; it is oriented as the
    server sees it (EXIF). Written to ``out_path`` when given.
    """
    from PIL import Image, ImageDraw, ImageFont

    if not isinstance(image, Image.Image):
        data = image if isinstance(image, (bytes, bytearray)) else _read(image)
        image = decode_image(data, max_pixels=10 ** 9)
    if image.mode in ("L", "RGB"):
        canvas = image.convert("RGB")
    elif image.mode == "RGBA":
        canvas = Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), image).convert("RGB")
    else:
        canvas = Image.fromarray(to_grey(image)).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    line = max(2, round(min(canvas.size) / 150))
    try:
        font = ImageFont.load_default(size=max(12, round(min(canvas.size) / 25)))
    except TypeError:  # Pillow < 10.1 has one fixed-size default font
        font = ImageFont.load_default()
    for face in faces:
        x, y, w, h = face["box"]
        draw.rectangle([x, y, x + w - 1, y + h - 1], outline=(255, 40, 40), width=line)
        label = f"{face['emotion']} {max(face['probabilities'].values()):.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        text_h = bottom - top + 2 * line
        # Above the box; else below it; else (a box as large as the picture) inside it.
        ty = y - text_h if y - text_h >= 0 else y + h if y + h + text_h <= canvas.height else y
        draw.rectangle([x, ty, x + right - left + 2 * line, ty + text_h], fill=(255, 40, 40))
        draw.text((x + line - left, ty + line - top), label, fill=(255, 255, 255), font=font)
    if out_path is not None:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        canvas.save(out_path)
    return canvas


def _draw_path(draw, image_path, count):
    draw = Path(draw)
    if count == 1:
        return draw
    return draw.with_name(f"{draw.stem}_{Path(image_path).stem}{draw.suffix or '.png'}")


def _predict_command(args):
    if args.run and args.url:
        raise FERError("give either --url (ask a running server) or --run (predict here), not both")
    if args.url:
        answers = predict_url(args.images, args.url, args.model, args.whole_image)
    else:
        answers = predict_local(args.images, args.run or run.PRETRAINED, args.whole_image)
    failed = 0
    for path, (status, answer) in zip(args.images, answers):
        failed += status != 200
        if args.json:
            print(json.dumps({"image": str(path), "status": status, **answer}))
        else:
            print(format_answer(path, status, answer))
        if args.draw and status == 200:
            out = _draw_path(args.draw, path, len(args.images))
            draw_faces(path, answer["faces"], out)
            if not args.json:
                print(f"  drew {out}")
    return 1 if failed else 0


def add_commands(subparsers):
    p = subparsers.add_parser(
        "predict", help="emotions of the faces in photos, from the model server or a run folder",
        description="Find the faces in each image and print their emotions. By default ferlib's pretrained "
                    "network answers here; with --run a training run folder's does (same handler code as the "
                    f"server); with --url a model server answers (e.g. {DEFAULT_URL}).")
    p.add_argument("images", nargs="+", help="image files (JPEG, PNG, BMP, GIF, WebP, TIFF)")
    p.add_argument("--url", default=None, help=f"ask the model server at this inference address, e.g. {DEFAULT_URL}")
    p.add_argument("--model", default=DEFAULT_MODEL, help="served model name")
    p.add_argument("--run", default=None, help="predict here from this run folder, without a server "
                                               "(default: 'pretrained', ferlib's own weights)")
    p.add_argument("--whole-image", action="store_true",
                   help="treat each image as one face crop (e.g. a 48x48 FER image) instead of detecting faces")
    p.add_argument("--draw", default=None,
                   help="write the image with boxes and labels here (several images: NAME_<image>.png)")
    p.add_argument("--json", action="store_true", help="print the raw JSON answers, one line per image")
    p.set_defaults(func=_predict_command)


__all__ = ["predict_url", "predict_local", "draw_faces", "format_answer", "synthetic_photo", "RequestError"]


def synthetic_photo(num_faces=3, seed=0, size=(640, 420)):
    """A stand-in photograph: synthetic FER faces of different sizes on a shaded background.

    The project ships no photographs; this gives the face detector something
    to find. Faces are drawn by :mod:`ferlib.synth` (48x48, enlarged) and kept
    only when the detector finds them on their own, so every face is findable.

    Returns
    -------
    (PIL.Image, list of int)
        The RGB picture, and the :data:`~ferlib.EMOTIONS` index drawn in each
        face, largest face first.
    """
    import cv2
    from PIL import Image

    from ..synth import make_faces
    from .faces import FaceDetector

    width, height = size
    detector = FaceDetector()
    faces = make_faces(8 * num_faces + 8, seed)
    y, x = np.mgrid[0:height, 0:width]
    canvas = (150 + 50 * x / width - 30 * y / height).astype(np.uint8)
    sides = [int(min(width / num_faces, height) * f) for f in np.linspace(0.95, 0.55, num_faces)]
    placed, drawn, left = 0, [], 10
    for image, emotion in zip(faces.images, faces.drawn):
        if placed == num_faces:
            break
        side = sides[placed]
        big = cv2.resize(image, (side, side), interpolation=cv2.INTER_CUBIC)
        alone = np.full((side * 2, side * 2), 128, np.uint8)
        alone[side // 2:side // 2 + side, side // 2:side // 2 + side] = big
        if emotion < 0 or len(detector.detect(alone)) != 1:
            continue
        top = (height - side) // 2
        canvas[top:top + side, left:left + side] = big
        left += side + 10
        drawn.append(int(emotion))
        placed += 1
    return Image.fromarray(canvas).convert("RGB"), drawn
