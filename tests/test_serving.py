"""Serving: image decoding, face finding, the MMS handler, the archive, and a real multi-model-server.

The fast tests run the handler logic in this process (an untrained exported
network is enough for them). The slow ones train a small network on the
synthetic set, package it, start a real multi-model-server on free loopback
ports with the repository's config.properties and talk HTTP to it.
"""
import io
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, SHARED_DATA, default_sigint, run_notebook

import ferlib  # noqa: F401  (before mxnet)
from ferlib import EMOTIONS
from ferlib import model as fer_model
from ferlib.serving import FacePredictor, RequestError, decode_image, package_run, read_archive
from ferlib.serving import archive as fer_archive
from ferlib.serving import handler as fer_handler
from ferlib.formats import IMAGE_SIDE
from ferlib.serving.faces import clip_box, cut_face, fer_crop_box
from ferlib.serving.handler import RequestError, to_grey
from ferlib.transforms import to_grey_uint8

PHOTOS_DIR = SHARED_DATA / "faces"
INPUT_SIZE = 48


def photos():
    found = sorted(p for p in PHOTOS_DIR.glob("photo_*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not found:
        pytest.skip(f"real photos not available: {PHOTOS_DIR} is absent or empty")
    return found


def same_faces(got, expected, tolerance=1e-5):
    """Face lists equal up to float noise (a batch of other size may round the last digit differently)."""
    if len(got) != len(expected):
        return False
    for a, b in zip(got, expected):
        if (a["box"], a["emotion"], a["probabilities"].keys()) != (b["box"], b["emotion"], b["probabilities"].keys()):
            return False
        if any(abs(a["probabilities"][k] - b["probabilities"][k]) > tolerance for k in a["probabilities"]):
            return False
    return True


def encode(image, fmt, **kwargs):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def test_image():
    """A 40x60 RGB test picture with structure in every channel."""
    y, x = np.mgrid[0:40, 0:60]
    rgb = np.stack([x * 4, y * 6, (x + y) * 2 % 256], axis=2).astype(np.uint8)
    rgb[10:20, 5:25] = (250, 30, 30)
    return rgb


test_image.__test__ = False  # a helper, not a test


@pytest.fixture(scope="module")
def untrained_run(tmp_path_factory):
    """A run folder with an untrained exported network (enough for the handler logic)."""
    run_dir = tmp_path_factory.mktemp("untrained-run")
    net = fer_model.get_model("vgg13_small", input_size=INPUT_SIZE)
    net.initialize()
    fer_model.export_net(net, run_dir, INPUT_SIZE)
    (run_dir / "config.json").write_text(json.dumps({
        "model": "vgg13_small", "model_kwargs": {"input_size": INPUT_SIZE}, "mode": "majority",
        "input_size": INPUT_SIZE, "emotions": list(EMOTIONS)}))
    (run_dir / "labels.json").write_text(json.dumps(list(EMOTIONS)))
    return run_dir


@pytest.fixture(scope="module")
def predictor(untrained_run):
    return FacePredictor(untrained_run)


# ---------------------------------------------------------------------------
# Decoding


LOSSLESS = 1.0  # mean absolute grey difference allowed
CASES = [
    ("PNG", "RGB", LOSSLESS), ("PNG", "L", LOSSLESS), ("PNG", "RGBA", LOSSLESS), ("PNG", "LA", LOSSLESS),
    ("PNG", "P", 12.0), ("PNG", "I;16", LOSSLESS), ("BMP", "RGB", LOSSLESS), ("TIFF", "RGB", LOSSLESS),
    ("TIFF", "I;16", LOSSLESS), ("TIFF", "I", LOSSLESS), ("TIFF", "CMYK", 3.0), ("JPEG", "RGB", 4.0),
    ("JPEG", "L", 4.0), ("JPEG", "CMYK", 6.0), ("GIF", "P", 12.0), ("WEBP", "RGB", 6.0),
    ("WEBP", "RGBA", 6.0),
]


@pytest.mark.parametrize("grey", [False, True], ids=["as-stored", "grey"])
@pytest.mark.parametrize("fmt,mode,tolerance", CASES, ids=[f"{f}-{m}" for f, m, _ in CASES])
def test_decode_reads_every_format_and_mode(fmt, mode, tolerance, grey):
    rgb = test_image()
    expected = to_grey_uint8(rgb)
    source = Image.fromarray(rgb)
    if mode == "I;16":
        source = Image.fromarray((expected.astype(np.uint16) * 257))  # 16-bit grey, full range
        assert source.mode.startswith("I;16")
    elif mode == "I":
        source = Image.fromarray(expected.astype(np.int32) * 257)
    elif mode == "RGBA":
        source = Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 200, np.uint8)]))
    elif mode == "LA":
        source = Image.fromarray(expected).convert("LA")
    elif mode != "RGB":
        source = source.convert(mode)
    image = decode_image(encode(source, fmt), grey=grey)
    if grey and fmt == "JPEG" and mode == "RGB":
        assert image.mode == "L"  # decoded straight to luma, the colour planes skipped
    result = to_grey(image)
    assert result.dtype == np.uint8 and result.shape == (40, 60)
    assert np.abs(result.astype(float) - expected).mean() <= tolerance


def test_decode_reads_a_1_bit_image():
    rgb = test_image()
    image = decode_image(encode(Image.fromarray(rgb).convert("1"), "PNG"))
    grey = to_grey(image)
    assert grey.shape == (40, 60) and set(np.unique(grey)) <= {0, 255}


def test_decode_honours_exif_orientation():
    rgb = test_image()
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    data = encode(Image.fromarray(rgb), "JPEG", quality=95, exif=exif.tobytes())
    expected = to_grey_uint8(np.rot90(rgb, k=-1))
    for grey_decode in (False, True):
        grey = to_grey(decode_image(data, grey=grey_decode))
        assert grey.shape == (60, 40)
        assert np.abs(grey.astype(float) - expected).mean() < 4.0


def _bomb_png():
    """A PNG of a few kB that decodes to 49 million pixels (above the 40 M default limit)."""
    return encode(Image.new("L", (7000, 7000)), "PNG")


def _float_tiff():
    return encode(Image.fromarray(np.linspace(0, 1, 2400, dtype=np.float32).reshape(40, 60)), "TIFF")


def _noise(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)


def _truncated(fmt):
    data = encode(Image.fromarray(_noise()), fmt)
    return data[: len(data) // 2]


BAD_INPUTS = {
    "empty": (lambda: b"", 400, "EmptyBody"),
    "not-an-image": (lambda: b"this is not an image at all", 415, "NotAnImage"),
    "truncated-png": (lambda: _truncated("PNG"), 400, "CorruptImage"),
    "truncated-jpeg": (lambda: _truncated("JPEG"), 400, "CorruptImage"),
    "decompression-bomb": (_bomb_png, 413, "ImageTooLarge"),
    "float-mode": (_float_tiff, 415, "UnsupportedMode"),
    "text": (lambda: "a text body", 415, "UnsupportedMediaType"),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_decode_rejects_bad_input_with_a_status(name):
    make, status, kind = BAD_INPUTS[name]
    with pytest.raises(RequestError) as err:
        decode_image(make())
    assert err.value.status == status and err.value.kind == kind
    assert err.value.to_json()["message"]


# ---------------------------------------------------------------------------
# Faces


def test_cut_face_inside_equals_area_resize_and_outside_is_mirrored():
    import cv2

    grey = to_grey_uint8(np.tile(test_image(), (3, 3, 1)))  # 120 x 180
    inside = cut_face(grey, [20, 10, 96, 96])
    assert np.array_equal(inside, cv2.resize(grey[10:106, 20:116], (48, 48), interpolation=cv2.INTER_AREA))
    corner = cut_face(grey, [-10, -10, 60, 60])
    assert corner.shape == (IMAGE_SIDE, IMAGE_SIDE)
    # The mirrored border repeats the image, so it matches the mirrored source.
    mirrored = cv2.copyMakeBorder(grey, 10, 0, 10, 0, cv2.BORDER_REFLECT)[:60, :60]
    assert np.array_equal(corner, cv2.resize(mirrored, (48, 48), interpolation=cv2.INTER_AREA))


def test_crop_box_is_square_centred_and_wider_by_the_fer_framing():
    x, y, w, h = fer_crop_box([100, 50, 80, 80], framing=1.185)
    assert w == h == pytest.approx(80 * 1.185)
    assert (x + w / 2, y + h / 2) == pytest.approx((140, 90))
    assert clip_box([-5.2, 10, 50, 400], (100, 40)) == [0, 10, 40, 90]


def test_every_real_photo_has_a_face_inside_it(predictor):
    for path in photos():
        image = decode_image(path.read_bytes())
        width, height = image.size
        boxes, crops = predictor.find_faces(to_grey(image))
        assert boxes, f"{path.name}: no face found"
        for x, y, w, h in boxes:
            assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= width and y + h <= height, path.name
        areas = [w * h for _, _, w, h in boxes]
        assert areas == sorted(areas, reverse=True)
        assert all(c.shape == (IMAGE_SIDE, IMAGE_SIDE) and c.dtype == np.uint8 for c in crops)


def test_no_face_gives_an_empty_list(predictor):
    flat = encode(Image.new("RGB", (320, 240), (120, 130, 140)), "PNG")
    [(status, answer)] = predictor.predict_bytes([flat])
    assert status == 200 and answer["faces"] == [] and answer["image_size"] == [320, 240]


# ---------------------------------------------------------------------------
# Predictor


def test_serving_input_is_the_evaluation_input(synthetic_cache, untrained_run):
    """A FER image sent as PNG with the whole-image option reaches the network exactly as in evaluation."""
    from ferlib.data import FERPlusDataset, load_cache

    data = load_cache(synthetic_cache)
    dataset = FERPlusDataset(data, "test", mode="majority", size=INPUT_SIZE)
    predictor = FacePredictor(untrained_run)
    for i in range(5):
        x, _ = dataset[i]
        face = data.images[dataset.rows[i]]
        grey = to_grey(decode_image(encode(Image.fromarray(face), "PNG")))
        _, crops = predictor.find_faces(grey, whole_image=True)
        assert np.array_equal(predictor.network_input(crops)[0], x)


def test_all_faces_of_all_images_go_through_one_forward_pass(untrained_run, monkeypatch):
    predictor = FacePredictor(untrained_run)
    calls = []
    forward = predictor.forward
    monkeypatch.setattr(predictor, "forward", lambda x: calls.append(x.shape) or forward(x))
    crops = [encode(Image.fromarray(face), "PNG") for face in ferlib.synth.make_faces(3, seed=1).images]
    photo_bytes = [p.read_bytes() for p in PHOTOS_DIR.glob("photo_*")] if PHOTOS_DIR.is_dir() else []
    payloads = crops + [b"not an image"] + photo_bytes
    flags = [True] * len(crops) + [False] + [False] * len(photo_bytes)
    answers = predictor.predict_bytes(payloads, flags)
    assert [s for s, _ in answers] == [200] * 3 + [415] + [200] * len(photo_bytes)
    num_faces = sum(len(a["faces"]) for s, a in answers if s == 200)
    assert calls == [(num_faces, 1, INPUT_SIZE, INPUT_SIZE)]
    # Batched answers are the answers of each image alone.
    for payload, flag, (_, answer) in zip(payloads, flags, answers):
        if payload == b"not an image":
            continue
        [(_, alone)] = predictor.predict_bytes([payload], flag)
        assert same_faces(alone["faces"], answer["faces"])
        for face in answer["faces"]:
            probabilities = list(face["probabilities"].values())
            assert sum(probabilities) == pytest.approx(1.0, abs=1e-4)
            assert face["emotion"] == EMOTIONS[int(np.argmax(probabilities))]


def test_several_faces_come_largest_first_and_the_limit_keeps_the_largest(untrained_run):
    from ferlib.serving.client import synthetic_photo

    picture, drawn = synthetic_photo(3, seed=0)
    grey = to_grey_uint8(np.asarray(picture))
    boxes = FacePredictor(untrained_run).find_faces(grey)[0]
    assert len(boxes) == len(drawn) == 3
    assert [w * h for _, _, w, h in boxes] == sorted((w * h for _, _, w, h in boxes), reverse=True)
    kept = FacePredictor(untrained_run, settings={"limits": {"max_faces": 1}}).find_faces(grey)[0]
    assert kept == boxes[:1]


# ---------------------------------------------------------------------------
# The MMS entry point, driven through MMS's own Python service layer


def _parse_mms_response(message):
    """Decode the worker -> frontend message of mms.protocol.otf_message_handler.create_predict_response."""
    buf = memoryview(bytes(message))
    pos = 0

    def integer():
        nonlocal pos
        value = struct.unpack("!i", buf[pos:pos + 4])[0]
        pos += 4
        return value

    def string():
        nonlocal pos
        n = integer()
        value = bytes(buf[pos:pos + n])
        pos += n
        return value

    code, message = integer(), string().decode()
    replies = []
    while True:
        n = integer()
        if n == -1:
            break
        pos -= 4
        request_id = string().decode()
        content_type = string().decode()
        status = integer()
        phrase = string().decode()
        headers = {}
        for _ in range(integer()):
            key = string().decode()
            headers[key] = string().decode()
        body = string()
        replies.append({"id": request_id, "content_type": content_type, "status": status, "phrase": phrase,
                        "body": body})
    return code, message, replies


def _mms_request(request_id, parameters, headers=()):
    return {"requestId": request_id.encode(),
            "parameters": [{"name": name, "contentType": ctype, "value": value} for name, ctype, value in parameters],
            "headers": [{"name": k.encode(), "value": v.encode()} for k, v in headers]}


def test_mms_handler_answers_each_request_of_a_batch(untrained_run, monkeypatch):
    pytest.importorskip("mms")
    from mms.service import Service

    monkeypatch.setattr(fer_handler, "_service", fer_handler.FERService())
    service = Service("fer", str(untrained_run), None, fer_handler.handle, None, 4)
    fer_handler.handle(None, service.context)  # what MMS does when the worker starts
    loaded = fer_handler._service.predictor
    face = encode(Image.fromarray(ferlib.synth.make_faces(1, seed=3).images[0]), "PNG")
    batch = [
        _mms_request("a", [("body", "image/png", bytearray(face))], [("X-Whole-Image", "1")]),
        _mms_request("b", [("img", "image/png", bytearray(face)), ("whole_image", "", bytearray(b"1"))]),
        _mms_request("c", [("body", "application/octet-stream", bytearray(b""))]),
        _mms_request("d", [("body", "text/plain", "hello")]),
        _mms_request("e", [("model_name", "", bytearray(b"fer")), ("whole_image", "", bytearray(b"1")),
                           ("body", "image/png", bytearray(face))]),
        _mms_request("f", [("body", "image/png", bytearray(face))]),
    ]
    code, _, replies = _parse_mms_response(service.predict(batch))
    assert code == 200 and [r["id"] for r in replies] == list("abcdef")
    assert [r["status"] for r in replies] == [200, 200, 400, 415, 200, 200]
    assert all(r["content_type"] == "" for r in replies)  # no header map: see pad_for_mms_frame
    bodies = [json.loads(r["body"]) for r in replies]
    local = FacePredictor(untrained_run).predict_bytes([face], True)[0][1]
    for body in (bodies[0], bodies[1], bodies[4]):
        assert body["whole_image"] and same_faces(body["faces"], local["faces"])
    assert bodies[2]["code"] == 400 and bodies[3]["code"] == 415 and bodies[2]["message"]
    assert bodies[5]["whole_image"] is False  # a synthetic crop has no detectable face: an empty answer
    assert fer_handler._service.predictor is loaded  # loaded once, at start


# ---------------------------------------------------------------------------
# Archive


def test_archive_holds_the_model_the_settings_and_ferlib_code_unchanged(untrained_run, tmp_path):
    mar = package_run(untrained_run, tmp_path / "store" / "fer.mar", version="2.3")
    manifest, settings, files = read_archive(mar)
    assert manifest["model"]["modelVersion"] == "2.3" and manifest["model"]["handler"] == "fer_service:handle"
    assert manifest["runtime"] == "python3"
    assert settings["input_size"] == INPUT_SIZE and settings["emotions"] == list(EMOTIONS)
    assert settings["model_version"] == "2.3" and settings["limits"]["max_pixels"] > 0
    assert settings["preprocessing"]["normalization"] == "ferplus"  # a run from before there was a choice
    names = {name for name, _ in files}
    assert {"model-symbol.json", "model-0000.params", "labels.json", "serving.json", "fer_service.py"} <= names
    with zipfile.ZipFile(mar) as z:
        for rel in fer_archive.RUNTIME_FILES:
            assert z.read(f"fer_runtime/{rel}") == (REPO / "ferlib" / rel).read_bytes(), rel
        assert z.read("model-0000.params") == (untrained_run / "model-0000.params").read_bytes()
    assert not list((tmp_path / "store").glob(".package-*"))  # no scratch left next to the archive


def test_archive_serves_without_ferlib(untrained_run, tmp_path):
    """Unpacked, the archive's handler runs in a Python where ``import ferlib`` fails."""
    mar = package_run(untrained_run, tmp_path / "fer.mar")
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(mar) as z:
        z.extractall(unpacked)
    face = encode(Image.fromarray(ferlib.synth.make_faces(1, seed=5).images[0]), "PNG")
    (tmp_path / "face.png").write_bytes(face)
    script = f"""
import json, sys
sys.modules["ferlib"] = None  # any import of ferlib now raises ImportError
sys.path.insert(0, {str(unpacked)!r})
from mms.context import RequestProcessor
from mms.service import Service
import fer_service
service = Service("fer", {str(unpacked)!r}, None, fer_service.handle, None, 2)
fer_service.handle(None, service.context)
face = open({str(tmp_path / 'face.png')!r}, "rb").read()
service.context.request_processor = [RequestProcessor({{}}), RequestProcessor({{}})]
replies = fer_service.handle([{{"body": face}}, {{"body": face, "whole_image": b"1"}}], service.context)
assert [service.context.get_response_status(i)[0] for i in range(2)] == [200, 200]
assert not any(name == "ferlib" or name.startswith("ferlib.") for name, m in sys.modules.items() if m)
print(json.dumps([json.loads(r) for r in replies]))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    answers = json.loads(done.stdout.strip().splitlines()[-1])
    local = FacePredictor(untrained_run).predict_bytes([face, face], [False, True])
    for answer, (_, expected) in zip(answers, local):
        assert answer["whole_image"] == expected["whole_image"] and same_faces(answer["faces"], expected["faces"])
    assert len(answers[1]["faces"]) == 1


# ---------------------------------------------------------------------------
# Hardening: every bad input is that request's own 4xx


def malformed_dds():
    """A DDS header with an unknown pixel format: Pillow raises NotImplementedError, not OSError."""
    header = bytearray(124)
    struct.pack_into("<IIIIIII", header, 0, 124, 0x1007, 4, 4, 16, 0, 0)
    struct.pack_into("<II4s", header, 72, 32, 0x4, b"XXXX")  # pixel format: FOURCC "XXXX"
    return b"DDS " + bytes(header) + bytes(64)


def test_a_malformed_image_fails_only_its_own_request(predictor):
    face = encode(Image.fromarray(ferlib.synth.make_faces(1, seed=8).images[0]), "PNG")
    with pytest.raises(NotImplementedError):
        Image.open(io.BytesIO(malformed_dds())).load()  # the case: not an error Pillow documents
    answers = predictor.predict_bytes([face, malformed_dds(), face], [True, True, True])
    assert [status for status, _ in answers] == [200, 400, 200]
    assert answers[1][1]["type"] == "CorruptImage" and "NotImplementedError" in answers[1][1]["message"]


def test_the_predict_command_answers_the_good_files_beside_a_bad_one(untrained_run, tmp_path, capsys):
    from ferlib.cli import main

    Image.fromarray(ferlib.synth.make_faces(1, seed=2).images[0]).save(tmp_path / "face.png")
    (tmp_path / "bad.dds").write_bytes(malformed_dds())
    code = main(["predict", str(tmp_path / "face.png"), str(tmp_path / "bad.dds"), "--run", str(untrained_run),
                 "--whole-image"])
    out = capsys.readouterr().out
    assert "face.png: 1 face" in out and "bad.dds: error 400" in out and "NotImplementedError" in out
    assert code != 0  # one file failed


def test_a_long_thin_image_is_refused_before_decoding():
    thin = encode(Image.new("L", (20_000, 1)), "PNG")  # 20,000 pixels: far below max_pixels
    with pytest.raises(RequestError, match="side longer than the limit") as err:
        decode_image(thin)
    assert err.value.status == 413


@pytest.mark.parametrize("value, means", [("1", True), ("yes", True), ("0", False), ("off", False), ("", False)])
def test_whole_image_option_values(value, means):
    from ferlib.serving.handler import parse_request

    assert parse_request({"body": b"x"}, {"whole_image": value}) == (b"x", means)


def test_an_unclear_whole_image_option_is_refused():
    from ferlib.serving.handler import parse_request

    payload, _ = parse_request({"body": b"x"}, {"whole_image": "maybe"})
    assert isinstance(payload, RequestError) and payload.status == 400 and "'maybe'" in str(payload)


def test_faces_beyond_the_cap_are_counted_in_the_answer(untrained_run):
    from ferlib.serving.client import synthetic_photo

    picture, drawn = synthetic_photo(3, seed=0)
    capped = FacePredictor(untrained_run, settings={"limits": {"max_faces": 1}})
    [(status, answer)] = capped.predict_bytes([encode(picture, "PNG")])
    assert status == 200 and len(answer["faces"]) == 1 and answer["faces_dropped"] == len(drawn) - 1
    [(_, full)] = FacePredictor(untrained_run).predict_bytes([encode(picture, "PNG")])
    assert full["faces_dropped"] == 0 and len(full["faces"]) == len(drawn)


def test_package_refuses_weights_that_do_not_load(untrained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(untrained_run, run)
    params = run / "model-0000.params"
    params.write_bytes(params.read_bytes()[: params.stat().st_size // 2])  # truncated
    with pytest.raises(ferlib.FERError, match="do not load as a network"):
        package_run(run, tmp_path / "fer.mar")
    assert not (tmp_path / "fer.mar").exists()


def test_a_worker_whose_model_files_are_gone_answers_503_at_once(untrained_run, tmp_path):
    """A worker restarted after its files vanished answers every request with the reason, instead of
    failing to start for ever while requests wait unanswered."""
    from mms.context import Context, RequestProcessor

    from ferlib.serving.handler import FERService

    gone = tmp_path / "gone"
    shutil.copytree(untrained_run, gone)
    (gone / "model-0000.params").unlink()
    context = Context("fer", str(gone), None, 2, None, "1.1.11")
    context.request_processor = [RequestProcessor({}), RequestProcessor({})]
    service = FERService()
    service.initialize(context)
    replies = service.handle([{"body": b"x"}, {"body": b"y"}], context)
    assert [context.get_response_status(i)[0] for i in range(2)] == [503, 503]
    assert all("register the model again" in json.loads(r)["message"] for r in replies)


def mms_frame(run_dir, bodies, batch_size):
    """The bytes an MMS 1.1.11 worker sends back for one batch, made by MMS's own Service."""
    import uuid

    from mms.service import Service

    from ferlib.serving import handler as fer_handler

    service = Service("fer", str(run_dir), None, fer_handler.handle, None, batch_size)
    fer_handler.handle(None, service.context)
    batch = [{"requestId": str(uuid.UUID(int=i + 1)).encode(), "headers": [],
              "parameters": [{"name": "body", "value": body, "contentType": "application/octet-stream"}]}
             for i, body in enumerate(bodies)]
    return bytes(service.predict(batch))


def test_batched_replies_survive_any_read_boundary_of_the_mms_front_end(untrained_run):
    """multi-model-server 1.1.11 lost whole batches under load: its front end throws when netty's
    read of a worker's reply ends inside a status code or a header map (see handler.py). With
    batches of 1 to 8 answers of every kind, no 16-byte-aligned read boundary may break the frame."""
    from mms_frames import decode, failing_cuts

    face = encode(Image.fromarray(ferlib.synth.make_faces(1, seed=3).images[0]), "PNG")
    photo = encode(Image.fromarray(np.hstack([ferlib.synth.make_faces(2, seed=4).images[k] for k in (0, 1)])), "PNG")
    kinds = [face, photo, b"not an image", b"", face[:40]]
    rng = np.random.default_rng(0)
    for size in range(1, 9):
        for _ in range(6):
            bodies = [kinds[k] for k in rng.integers(0, len(kinds), size)]
            frame = mms_frame(untrained_run, bodies, size)
            assert failing_cuts(frame) == [], f"batch of {size}: the front end would fail this frame"
            assert decode(frame) == "complete"


def test_the_frame_oracle_catches_the_old_reply(untrained_run):
    """The same check on a reply made as before the fix (a content-type header per answer) fails."""
    from mms.context import Context, RequestProcessor
    from mms.protocol.otf_message_handler import create_predict_response

    from mms_frames import failing_cuts

    context = Context("fer", str(untrained_run), None, 8, None, "1.1.11")
    context.request_processor = [RequestProcessor({}) for _ in range(8)]
    for idx in range(8):
        context.set_response_status(200, "OK", idx)
        context.set_response_content_type(idx, "application/json")
    replies = [json.dumps({"faces": [], "image_size": [48 + i, 48], "whole_image": True}) for i in range(8)]
    ids = {i: f"00000000-0000-0000-0000-{i:012d}" for i in range(8)}
    assert failing_cuts(bytes(create_predict_response(replies, ids, "Prediction success", 200, context)))


def test_package_reports_a_run_without_exported_network(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps({"input_size": 48, "emotions": list(EMOTIONS)}))
    with pytest.raises(ferlib.FERError, match="model-symbol.json is missing"):
        package_run(tmp_path / "run", tmp_path / "fer.mar")
    with pytest.raises(ferlib.FERError, match="must end in .mar"):
        package_run(tmp_path / "run", tmp_path / "fer.zip")


# ---------------------------------------------------------------------------
# Command line


def test_predict_command_runs_locally_and_draws(untrained_run, tmp_path, capsys):
    from ferlib.cli import main

    face = ferlib.synth.make_faces(1, seed=2).images[0]
    Image.fromarray(face).save(tmp_path / "face.png")
    code = main(["predict", str(tmp_path / "face.png"), "--run", str(untrained_run), "--whole-image", "--json",
                 "--draw", str(tmp_path / "drawn.png")])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    answer = json.loads(out[0])
    assert answer["status"] == 200 and len(answer["faces"]) == 1 and answer["faces"][0]["box"] == [0, 0, 48, 48]
    drawn = Image.open(tmp_path / "drawn.png")
    assert drawn.size == (48, 48) and drawn.mode == "RGB"
    assert np.asarray(drawn)[..., 0].mean() > np.asarray(drawn)[..., 1].mean()  # the red box is drawn


def test_predict_command_reports_bad_files_and_no_server(untrained_run, tmp_path, capsys):
    from ferlib.cli import main
    from ferlib.serving.server import free_port

    (tmp_path / "bad.png").write_bytes(b"nope")
    assert main(["predict", str(tmp_path / "bad.png"), "--run", str(untrained_run)]) == 1
    assert "error 415" in capsys.readouterr().out
    assert main(["predict", str(tmp_path / "bad.png"), "--url", f"http://127.0.0.1:{free_port()}"]) == 2
    assert "cannot reach the model server" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# A real server (slow)


def _server_processes_left(server_pid_session):
    """Live processes of the server's session (its launcher started a new session)."""
    import psutil

    left = []
    for proc in psutil.process_iter(["pid", "name", "cmdline", "status"]):
        try:
            if os.getsid(proc.pid) == server_pid_session and proc.info["status"] != psutil.STATUS_ZOMBIE:
                left.append(proc.info)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return left


#: A small network that learns the synthetic set in about three minutes on 2 CPU cores (val. accuracy
#: 0.96; VGG without dropout sits at chance for a few epochs, and 7 epochs were not enough).
TEST_TRAINING = dict(mode="majority", model="vgg13_small", model_kwargs={"conv_dropout": 0.0, "dense_dropout": 0.0},
                     num_epochs=12, batch_size=32, lr=0.05, schedule="cosine", input_size=INPUT_SIZE, gpus="cpu",
                     progress=False, seed=0)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A small network trained on the synthetic set (48 px), exported by training."""
    from ferlib.train import train

    out = tmp_path_factory.mktemp("trained")
    fer_path, ferplus_path = ferlib.synth.write_synthetic(out / "synthetic", n=1500, seed=11)
    data = ferlib.data.prepare(fer_path, ferplus_path, out / "cache", progress=False)
    result = train(data, out / "run", **TEST_TRAINING)
    print(f"trained the test network: validation accuracy {result['best_val_acc']:.3f}")
    assert result["best_val_acc"] > 0.35, result["best_val_acc"]  # chance 1/8; the largest class 0.2
    return Path(result["run_dir"]), data


@pytest.fixture(scope="module")
def served(trained_run, tmp_path_factory):
    """A real multi-model-server with the trained archive registered with batching (batch 8)."""
    from ferlib.serving import ModelServer

    run_dir, data = trained_run
    store = tmp_path_factory.mktemp("model_store")
    package_run(run_dir, store / "fer.mar", version="1.0")
    server = ModelServer(store, inference_port="free")
    session = None
    try:
        server.start()
        session = server.process.pid
        server.register("fer.mar", name="fer", batch_size=8, max_batch_delay=20, initial_workers=1)
        yield server, run_dir, data
    finally:
        left = server.stop()
        if session is not None:
            assert not left and not _server_processes_left(session), "server processes left behind"


def _post(server, body, content_type="application/octet-stream", **headers):
    import requests

    return requests.post(f"{server.inference_url}/predictions/fer", data=body, timeout=60,
                         headers={"Content-Type": content_type, **headers})


@pytest.mark.slow
def test_server_finds_a_face_in_every_real_photo(served):
    server, _, _ = served
    for path in photos():
        reply = _post(server, path.read_bytes(), "image/png" if path.suffix == ".png" else "image/jpeg")
        # No Content-Type: MMS 1.1.11 misreads the header map in batched replies (see handler.py).
        assert reply.status_code == 200 and "content-type" not in reply.headers
        answer = reply.json()
        width, height = answer["image_size"]
        assert (width, height) == Image.open(path).size
        assert answer["faces"], f"{path.name}: no face"
        for face in answer["faces"]:
            x, y, w, h = face["box"]
            assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= width and y + h <= height
            assert set(face["probabilities"]) == set(EMOTIONS) and face["emotion"] in EMOTIONS


@pytest.mark.slow
def test_server_classifies_synthetic_crops_with_the_whole_image_option(served):
    server, run_dir, data = served
    test_set = ferlib.data.FERPlusDataset(data, "test", mode="majority", size=INPUT_SIZE)
    rows, labels = test_set.rows[:64], test_set.labels[:64]  # faces with a majority label
    local = FacePredictor(run_dir)
    correct = 0
    for row, label in zip(rows, labels):
        body = encode(Image.fromarray(data.images[row]), "PNG")
        reply = _post(server, body, "image/png", **{"X-Whole-Image": "1"})
        assert reply.status_code == 200
        [face] = reply.json()["faces"]
        [(_, here)] = local.predict_bytes([body], True)
        assert same_faces([face], here["faces"])  # the server computes what the run folder does
        correct += face["emotion"] == EMOTIONS[label]
    assert correct / len(rows) > 0.3, f"{correct} of {len(rows)} synthetic crops classified right"
    # The query parameter works where MMS passes it to the handler: /invocations.
    import requests

    row = rows[0]
    reply = requests.post(f"{server.inference_url}/invocations", params={"model_name": "fer", "whole_image": "1"},
                          data=encode(Image.fromarray(data.images[row]), "PNG"),
                          headers={"Content-Type": "image/png"}, timeout=60)
    assert reply.status_code == 200 and reply.json()["whole_image"] is True


@pytest.mark.slow
def test_server_answers_bad_input_with_4xx_json_and_stays_healthy(served):
    server, _, _ = served
    good = encode(Image.fromarray(ferlib.synth.make_faces(1, seed=4).images[0]), "PNG")
    for name, (make, status, kind) in BAD_INPUTS.items():
        body = make()
        reply = _post(server, body.encode() if isinstance(body, str) else body,
                      "text/plain" if isinstance(body, str) else "application/octet-stream")
        assert reply.status_code == status, (name, reply.text)
        if name == "text":  # decode_input_request=false: text reaches the handler as bytes
            kind = "NotAnImage"
        assert reply.json()["type"] == kind and reply.json()["message"], name
        assert server.ping() == {"status": "Healthy"}
        after = _post(server, good, "image/png", **{"X-Whole-Image": "1"})
        assert after.status_code == 200 and len(after.json()["faces"]) == 1, name
    # Bodies above config.properties' max_request_size are refused by MMS itself (empty 413).
    limit = int(server.properties["max_request_size"])
    assert _post(server, b"\0" * (limit + 1)).status_code == 413
    assert server.ping() == {"status": "Healthy"}
    assert server.ready_workers("fer") == 1


@pytest.mark.slow
def test_server_under_16_concurrent_clients(served):
    import requests

    server, run_dir, data = served
    rows = data.split_indices("test")[:10]
    bodies = [encode(Image.fromarray(data.images[r]), "PNG") for r in rows]
    expected = [a["faces"] for _, a in FacePredictor(run_dir).predict_bytes(bodies, True)]
    results, lock = [], threading.Lock()

    def client(worker):
        with requests.Session() as session:
            for k in range(worker, 200, 16):
                reply = session.post(f"{server.inference_url}/predictions/fer", data=bodies[k % len(bodies)],
                                     headers={"Content-Type": "image/png", "X-Whole-Image": "1"}, timeout=120)
                with lock:
                    results.append((k, reply.status_code, reply.json()))

    start = time.time()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(client, range(16)))
    elapsed = time.time() - start
    assert len(results) == 200
    assert [status for _, status, _ in results] == [200] * 200
    for k, _, answer in results:
        assert same_faces(answer["faces"], expected[k % len(bodies)])
    print(f"200 requests from 16 clients in {elapsed:.1f} s ({200 / elapsed:.0f} requests/s)")
    described = server.describe("fer")
    assert described["batchSize"] == 8 and described["modelVersion"] == "1.0"
    assert "FERBatchRequests" in server.metrics_log()


def load_photos():
    """The shared real photos, or synthetic stand-in photos where they are absent."""
    found = sorted(p for p in PHOTOS_DIR.glob("photo_*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if found:
        return [p.read_bytes() for p in found]
    from ferlib.serving.client import synthetic_photo

    return [encode(synthetic_photo(n, seed=n)[0], "JPEG") for n in (1, 2, 3)]


@pytest.mark.slow
def test_batched_serving_loses_no_request_under_load(served):
    """The README's batching (batch 8) under 16 clients sending photos and crops: every one of
    2,000 requests answered 200, and no worker died (multi-model-server 1.1.11 used to kill the worker
    and fail the whole batch when it misread a reply; see handler.py)."""
    import requests

    server, _, data = served
    # Photos, and FER crops sent whole: replies of many sizes, so frames of many layouts.
    # (Whether a frame breaks depends on where netty's reads end, so a run without the fix can
    # pass; test_batched_replies_survive_any_read_boundary_of_the_mms_front_end checks them all.)
    mixed = [(body, {}) for body in load_photos()] + [
        (encode(Image.fromarray(data.images[r]), "PNG"), {"X-Whole-Image": "1"}) for r in data.split_indices("test")[:7]]
    total, clients = 2000, 16  # more clients than the batch size: full batches, the largest frames
    statuses, lock = [], threading.Lock()

    def client(worker):
        with requests.Session() as session:
            for k in range(worker, total, clients):
                body, headers = mixed[k % len(mixed)]
                reply = session.post(f"{server.inference_url}/predictions/fer", data=body, timeout=120,
                                     headers={"Content-Type": "application/octet-stream", **headers})
                faces = reply.json().get("faces") if reply.status_code == 200 else None
                with lock:
                    statuses.append((reply.status_code, faces is not None))

    start = time.time()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    elapsed = time.time() - start
    log = "\n".join(p.read_text(errors="replace") for p in server.log_dir.glob("*.log"))
    print(f"{total} requests, {clients} clients, batch 8: {elapsed:.1f} s ({total / elapsed:.0f} requests/s)")
    assert sorted(set(statuses)) == [(200, True)] and len(statuses) == total
    assert "Backend worker process died" not in log and "Unknown exception" not in log


@pytest.mark.slow
def test_the_management_api_is_out_of_reach_of_web_pages(served, tmp_path):
    """A page in a browser on this machine can send a form POST with its own Origin and Host to any
    local TCP port. The only TCP port the server listens on is the inference API's, which has no
    /models; the management API is a Unix socket in a folder only this user can enter."""
    import psutil
    import requests

    server, _, _ = served
    listening = {c.laddr.port for p in server.processes() for c in p.net_connections(kind="tcp")
                 if c.status == psutil.CONN_LISTEN}
    inference_port = int(server.inference_url.rsplit(":", 1)[1])
    assert listening == {inference_port}
    before = server.manage("GET", "/models")
    for port in listening:
        reply = requests.post(f"http://127.0.0.1:{port}/models", timeout=30,
                              params={"url": "fer.mar", "model_name": "attack", "initial_workers": 1},
                              data={"x": "1"}, headers={"Origin": "http://evil.example", "Host": "evil.example"})
        assert reply.status_code in (400, 404, 405)
    assert server.manage("GET", "/models") == before
    assert (server.management_socket.parent.stat().st_mode & 0o777) == 0o700


@pytest.mark.slow
def test_registering_a_second_copy_of_a_served_archive_is_refused(served):
    server, _, _ = served
    with pytest.raises(ferlib.FERError, match="already served as model 'fer'"):
        server.register("fer.mar", name="fer-batch-16", batch_size=16)
    assert [m["modelName"] for m in server.manage("GET", "/models")["models"]] == ["fer"]


@pytest.fixture()
def front(served):
    from ferlib.serving import FrontDoor

    server, _, _ = served
    with FrontDoor(server.inference_url, read_timeout=2, max_body=1_000_000) as door:
        yield door


def _raw(url, request, timeout=10):
    """Send raw bytes to the server at ``url``; return the reply's status line and body (or None)."""
    host, port = urlsplit(url).hostname, urlsplit(url).port
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except socket.timeout:
            return None, None
    head, _, body = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0].decode(), body


@pytest.mark.slow
def test_the_front_door_answers_in_json_what_mms_answers_badly(front, served):
    """Each case straight to multi-model-server 1.1.11 (the defect) and through the front door."""
    import requests

    server, _, _ = served
    photo = load_photos()[0]
    mms, door = f"{server.inference_url}/predictions/fer", f"{front.url}/predictions/fer"
    # A wrong method: MMS hands an empty body to the handler (400); the front door says 405.
    assert requests.get(mms, timeout=30).status_code == 400
    reply = requests.get(door, timeout=30)
    assert reply.status_code == 405 and reply.json()["type"] == "MethodNotAllowed" and reply.headers["Allow"]
    # A raw image sent as a form: 500 from MMS's form decoder; the front door passes the bytes on.
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    assert requests.post(mms, data=photo, headers=form, timeout=30).status_code == 500
    reply = requests.post(door, data=photo, headers=form, timeout=30)
    assert reply.status_code == 200 and reply.json()["faces"]
    assert reply.headers["Content-Type"] == "application/json"
    # Too large: a JSON 413 before the body is even read.
    status, body = _raw(front.url, b"POST /predictions/fer HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n")
    assert " 413 " in status and json.loads(body)["type"] == "RequestTooLarge"
    # Half sent: MMS holds the connection open; the front door answers 408 after its read timeout.
    half = b"POST /predictions/fer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc"
    assert _raw(server.inference_url, half, timeout=5) == (None, None)
    status, body = _raw(front.url, half, timeout=15)
    assert " 408 " in status and json.loads(body)["type"] == "RequestTimeout"
    # Good requests pass through unchanged, multipart forms and the whole-image header included.
    reply = requests.post(door, files={"data": ("p.png", photo, "image/png")}, timeout=30)
    assert reply.status_code == 200 and reply.json()["faces"]
    assert requests.get(f"{front.url}/ping", timeout=30).json()["status"] == "Healthy"


def test_the_front_door_says_when_the_model_server_is_down():
    import requests

    from ferlib.serving import FrontDoor
    from ferlib.serving.server import free_port

    with FrontDoor(f"http://127.0.0.1:{free_port()}") as door:
        reply = requests.post(f"{door.url}/predictions/fer", data=b"x", timeout=30)
    assert reply.status_code == 502 and "not answering" in reply.json()["message"]


@pytest.mark.slow
def test_the_serve_command_batches_behind_the_front_door_and_stops_on_ctrl_c(trained_run, tmp_path):
    import signal

    import requests

    from ferlib.serving.server import free_port

    run_dir, _ = trained_run
    package_run(run_dir, tmp_path / "store" / "fer.mar")
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "ferlib", "serve", "--model-store", str(tmp_path / "store"),
                                "--port", str(port), "--batch-size", "4"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, cwd=tmp_path, preexec_fn=default_sigint)
    try:
        first = process.stdout.readline()
        assert f"http://127.0.0.1:{port}/predictions/fer" in first and "batches of up to 4" in first, first
        reply = requests.post(f"http://127.0.0.1:{port}/predictions/fer", data=load_photos()[0], timeout=60)
        assert reply.status_code == 200 and reply.json()["faces"]
    finally:
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=120)
    assert process.returncode == 0 and "stopped" in rest


@pytest.mark.slow
def test_readme_start_command_serves_and_stops_clean(trained_run, tmp_path):
    """--models fer=fer.mar at start (the README's command), then stop: nothing left running."""
    from ferlib.serving import ModelServer

    run_dir, _ = trained_run
    package_run(run_dir, tmp_path / "model_store" / "fer.mar")
    server = ModelServer(tmp_path / "model_store", models={"fer": "fer.mar"}, inference_port="free")
    try:
        server.start()
        session = server.process.pid
        pids = [p.pid for p in server.processes()]
        assert len(pids) >= 3  # launcher, Java frontend, Python worker
        face = encode(Image.fromarray(ferlib.synth.make_faces(1, seed=6).images[0]), "PNG")
        assert _post(server, face, "image/png", **{"X-Whole-Image": "1"}).status_code == 200
        assert (server.log_dir / "access_log.log").is_file()
    finally:
        left = server.stop()
    assert not left and not _server_processes_left(session)
    import psutil

    assert not [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]


@pytest.mark.slow
def test_notebook_05_runs_in_quick_mode(tmp_path):
    nb = run_notebook("05_serving.ipynb", tmp_path, QUICK=True, OUT_DIR=str(tmp_path / "out"))
    errors = [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert (tmp_path / "out" / "model_store" / "fer.mar").is_file()
    assert (tmp_path / "out" / "fer.onnx").is_file()
    images = [o for c in nb["cells"] for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 2  # drawn answers on a photo and on a FER crop


def test_truncated_images_are_refused_even_when_a_library_allows_them(monkeypatch):
    """gluoncv.data switches on PIL's LOAD_TRUNCATED_IMAGES process-wide; the handler must not care."""
    import io

    from PIL import Image, ImageFile

    from ferlib.serving import RequestError, decode_image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)).save(buffer, "PNG")
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RequestError) as caught:
        decode_image(buffer.getvalue()[:-200])
    assert caught.value.status == 400
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's setting is restored
