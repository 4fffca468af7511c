"""The web page of ``python -m ferlib web``: its files and its server, then the page in a real browser.

The fast tests check the page's files and the front door that serves them. The slow ones train a small
network on the synthetic set, serve it as ``python -m ferlib serve`` does (multi-model-server with
batching behind the front door), serve the page in front of it, and drive Debian's ``chromium`` with
``chromedriver`` through selenium: a photo, bad files, a model server that is down, a refused camera, and
Chromium's fake camera playing a clip made of face images. They skip, saying why, without selenium or
the browser (``.ci/run`` installs both). Screenshots go to ``build/web/``.
"""
import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from conftest import REPO, SHARED_DATA, default_sigint

import ferlib  # noqa: F401  (before mxnet)
from ferlib import EMOTIONS
from ferlib.errors import FERError
from ferlib.serving.server import free_port
from ferlib.web import PAGE_FILES, web_door

BUILD = REPO / "build" / "web"
PHOTOS_DIR = SHARED_DATA / "faces"
PAGE_DIR = REPO / "ferlib" / "web"


def dead_backend():
    """The address of a model server that is not running."""
    return f"http://127.0.0.1:{free_port()}"


# ---------------------------------------------------------------------------
# The page's files and its server (fast)


def test_the_page_is_plain_files_shipped_as_package_data():
    from importlib import resources

    names = {name for name, _ in PAGE_FILES.values()}
    assert names == {"index.html", "app.js", "style.css"}
    texts = {name: resources.files("ferlib.web").joinpath(name).read_text(encoding="utf-8") for name in names}
    # Self-contained: nothing is fetched from another site (no CDN).
    for name, text in texts.items():
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", text, re.I), f"{name} loads from elsewhere"
    html = texts["index.html"]
    for hook in ('id="file"', 'id="webcam"', 'id="status"', 'name="viewport"', "/static/app.js", "/static/style.css"):
        assert hook in html, hook
    assert '"face"' in texts["app.js"]  # each face found: an element of class face
    try:
        import tomllib
    except ImportError:  # Python 3.10
        return
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    shipped = config["tool"]["setuptools"]["package-data"]["ferlib.web"]
    assert all(any(Path(name).match(pattern) for pattern in shipped) for name in names)
    assert any(dep.startswith("selenium") for dep in config["project"]["optional-dependencies"]["dev"])


def test_the_page_server_serves_the_page_and_forwards_only_predictions():
    backend = dead_backend()
    with web_door(backend, port=0) as door:
        page = requests.get(f"{door.url}/", timeout=30)
        assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
        assert 'id="webcam"' in page.text
        assert "default-src 'self'" in page.headers["Content-Security-Policy"]
        script = requests.get(f"{door.url}/static/app.js", timeout=30)
        assert script.status_code == 200 and "javascript" in script.headers["Content-Type"]
        assert requests.get(f"{door.url}/static/style.css", timeout=30).headers["Content-Type"].startswith("text/css")
        settings = requests.get(f"{door.url}/settings.json", timeout=30).json()
        assert settings == {"model": "fer", "backend": backend, "max_bytes": door.max_body, "emotions": list(EMOTIONS)}
        # The management API is never forwarded, whatever the method.
        for method in ("GET", "POST", "PUT", "DELETE"):
            reply = requests.request(method, f"{door.url}/models?url=http://x/y.mar", timeout=30)
            assert reply.status_code in (404, 405), (method, reply.status_code)
        assert requests.get(f"{door.url}/static/../../etc/passwd", timeout=30).status_code == 404
        # Predictions are forwarded; here the model server is down, and the page is told so in JSON.
        reply = requests.post(f"{door.url}/predictions/fer", data=b"x", timeout=30)
        assert reply.status_code == 502 and "not answering" in reply.json()["message"]


def test_the_web_command_defaults_to_this_machine_and_refuses_a_bad_url(capsys):
    from ferlib.cli import build_parser, main

    args = build_parser().parse_args(["web"])
    assert (args.host, args.port, args.url, args.model) == ("127.0.0.1", 8000, "http://127.0.0.1:8080", "fer")
    for url in ("https://127.0.0.1:8080", "127.0.0.1:8080", "http://127.0.0.1:8080/models", "http://h:port"):
        assert main(["web", "--url", url, "--port", "0"]) == 2
        assert "--url" in capsys.readouterr().err
    assert main(["web", "--model", "a/b", "--port", "0"]) == 2
    with web_door(dead_backend(), port=0) as door:
        with pytest.raises(FERError, match="cannot listen"):
            web_door(dead_backend(), port=door.server_address[1])


def test_the_web_command_serves_the_page_until_ctrl_c(tmp_path):
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "ferlib", "web", "--port", str(port), "--url", dead_backend()],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
                               preexec_fn=default_sigint)
    try:
        first = process.stdout.readline()
        assert f"open http://127.0.0.1:{port}/" in first, first
        assert 'id="file"' in requests.get(f"http://127.0.0.1:{port}/", timeout=30).text
    finally:
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=60)
    assert process.returncode == 0 and "stopped" in rest


# ---------------------------------------------------------------------------
# Test pictures


def face_images():
    """Pictures with one face each: the shared real photos when there, else synthetic stand-ins."""
    found = sorted(p for p in PHOTOS_DIR.glob("photo_*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if found:
        return [Image.open(p).convert("RGB") for p in found]
    from ferlib.serving.client import synthetic_photo

    return [synthetic_photo(1, seed=seed, size=(420, 420))[0] for seed in range(3)]


def write_y4m(images, path, size=(640, 480), fps=10, hold=10):
    """A YUV4MPEG2 clip (4:2:0, full-range BT.601 as JPEG) showing each image for ``hold`` frames,
    for Chromium's ``--use-file-for-fake-video-capture``."""
    width, height = size
    with open(path, "wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode("ascii"))
        for image in images:
            canvas = Image.new("RGB", size, (120, 128, 136))
            picture = image.convert("RGB")
            picture.thumbnail((width - 40, height - 40))
            canvas.paste(picture, ((width - picture.width) // 2, (height - picture.height) // 2))
            rgb = np.asarray(canvas, dtype=np.float32)
            r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
            y = 0.299 * r + 0.587 * g + 0.114 * b
            cb = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
            cr = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b
            half = [c.reshape(height // 2, 2, width // 2, 2).mean(axis=(1, 3)) for c in (cb, cr)]
            planes = b"".join(np.clip(np.rint(p), 0, 255).astype(np.uint8).tobytes() for p in (y, *half))
            for _ in range(hold):
                out.write(b"FRAME\n" + planes)
    return path


def test_the_fake_camera_clip_is_a_valid_y4m(tmp_path):
    clip = write_y4m([Image.new("RGB", (50, 40), (255, 0, 0))], tmp_path / "red.y4m", size=(64, 48), hold=2)
    data = clip.read_bytes()
    header, _, rest = data.partition(b"\n")
    assert header == b"YUV4MPEG2 W64 H48 F10:1 Ip A1:1 C420jpeg"
    frame = 64 * 48 * 3 // 2
    assert len(rest) == 2 * (len(b"FRAME\n") + frame)
    body = rest[len(b"FRAME\n"):len(b"FRAME\n") + frame]
    y, cr = np.frombuffer(body[:64 * 48], np.uint8), np.frombuffer(body[-32 * 24:], np.uint8)
    assert abs(int(y.reshape(48, 64)[24, 32]) - 76) <= 1      # pure red: Y 76, Cr 255
    assert int(cr.reshape(24, 32)[12, 16]) == 255


# ---------------------------------------------------------------------------
# The page in a real browser (slow)


def browser_or_skip():
    from ferlib.web.browser import BrowserMissing, find_chromium

    try:
        find_chromium()
    except BrowserMissing as err:
        pytest.skip(f"no browser for the web page: {err}")


#: The network of tests/test_serving.py: learns the synthetic set in well under a minute on 2 cores.
TEST_TRAINING = dict(mode="majority", model="vgg13_small", model_kwargs={"conv_dropout": 0.0, "dense_dropout": 0.0},
                     num_epochs=12, batch_size=32, lr=0.05, schedule="cosine", input_size=48, gpus="cpu",
                     progress=False, seed=0)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A trained archive served as ``python -m ferlib serve`` serves it, and the page in front of it."""
    browser_or_skip()
    from ferlib.serving import package_run
    from ferlib.serving.front import serve
    from ferlib.train import train

    out = tmp_path_factory.mktemp("web")
    fer_path, ferplus_path = ferlib.synth.write_synthetic(out / "synthetic", n=1500, seed=11)
    data = ferlib.data.prepare(fer_path, ferplus_path, out / "cache", progress=False)
    result = train(data, out / "run", **TEST_TRAINING)
    package_run(result["run_dir"], out / "store" / "fer.mar")
    ready, stop, urls, failed = threading.Event(), threading.Event(), [], []

    def run():
        try:
            serve(out / "store", port=free_port(), ready=lambda url: (urls.append(url), ready.set()), stop=stop)
        except BaseException as err:  # noqa: BLE001  (reported by the fixture)
            failed.append(err)
            ready.set()

    thread = threading.Thread(target=run, name="model-server", daemon=True)
    thread.start()
    try:
        assert ready.wait(300) and not failed, failed
        with web_door(urls[0], port=0) as door:
            yield door
    finally:
        stop.set()
        thread.join(timeout=120)
    assert not thread.is_alive(), "the model server did not stop"


@pytest.fixture(scope="module")
def browser(live):
    """One headless Chromium for the photo tests, with a camera whose permission it refuses."""
    from ferlib.web.browser import chromium

    with chromium(size=(1100, 900), camera="deny") as driver:
        yield driver


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """Files to upload: a real photo (or a stand-in), a picture of three faces, and bad files."""
    from ferlib.serving.client import synthetic_photo

    folder = tmp_path_factory.mktemp("pictures")
    face_images()[0].save(folder / "photo.jpg", quality=90)
    group, drawn = synthetic_photo(3, seed=0)
    group.save(folder / "three_faces.png")
    (folder / "notes.txt").write_text("not a picture\n")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"no image here" * 10)
    y, x = np.mgrid[0:240, 0:320]
    Image.fromarray((x * 0.5 + y * 0.3).astype(np.uint8)).save(folder / "no_face.png")
    with open(folder / "huge.jpg", "wb") as f:   # over the 20 MB limit: refused before it is sent
        f.truncate(21 * 1024 * 1024)
    return folder


def faces_on_page(driver):
    """The text of each ``.face`` element (read at once: the webcam replaces them at every frame)."""
    return driver.execute_script("return [...document.querySelectorAll('.face')].map((e) => e.innerText);")


def top_emotion(text):
    """The top emotion of a face element: the first EMOTIONS name in its text (its title, then its bars)."""
    return next((word for word in re.findall(r"[a-z]+", text) if word in EMOTIONS), None)


def painted(driver, element_id):
    """How many pixels of a canvas are painted (alpha > 0)."""
    return driver.execute_script("""
        const c = document.getElementById(arguments[0]);
        if (!c.width || !c.height) return 0;
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++;
        return n;""", element_id)


def open_page(driver, url):
    from ferlib.web.browser import set_viewport, wait_ready

    set_viewport(driver, 1100, 900)
    driver.get(url.rstrip("/") + "/")
    return wait_ready(driver, 60)


@pytest.mark.slow
def test_a_photo_gets_a_box_and_the_emotions_of_every_face(live, browser, pictures):
    from ferlib.web.browser import PHONE, page_height, set_viewport, upload, wait_for

    text, kind = open_page(browser, live.url)
    assert kind == "ok" and text.startswith("Ready"), text
    text, kind = upload(browser, pictures / "photo.jpg")
    assert kind == "ok" and "1 face found" in text, text
    [face] = faces_on_page(browser)
    assert top_emotion(face), face
    assert all(name in face for name in EMOTIONS)  # the bar chart of the 8 probabilities
    wait_for(browser, lambda d: d.execute_script("return document.getElementById('photo').complete"))
    assert painted(browser, "overlay") > 200  # the box and its label
    BUILD.mkdir(parents=True, exist_ok=True)
    set_viewport(browser, 1100, page_height(browser))
    time.sleep(0.3)
    browser.save_screenshot(str(BUILD / "photo.png"))

    text, kind = upload(browser, pictures / "three_faces.png")
    assert kind == "ok" and "3 faces found" in text, text
    faces = faces_on_page(browser)
    assert len(faces) == 3 and all(top_emotion(face) for face in faces), faces
    # A phone-sized screen: one column, nothing wider than the screen.
    set_viewport(browser, *PHONE, mobile=True)
    time.sleep(0.3)
    assert browser.execute_script("return document.documentElement.scrollWidth") <= PHONE[0]
    set_viewport(browser, PHONE[0], page_height(browser), mobile=True)
    time.sleep(0.3)
    browser.save_screenshot(str(BUILD / "photo-phone.png"))
    set_viewport(browser, 1100, 900)
    browser.save_screenshot(str(BUILD / "three_faces.png"))
    print(f"screenshots in {BUILD}")


@pytest.mark.slow
def test_files_that_are_not_photos_are_explained_and_the_next_photo_works(live, browser, pictures):
    from ferlib.web.browser import upload

    open_page(browser, live.url)
    expected = {
        "notes.txt": "not an image",                   # refused by the page: its type is text/plain
        "broken.png": "could not read this image",    # refused by the model server: 400 with a message
        "huge.jpg": "too large",                      # refused by the page: over the upload limit
        "no_face.png": "No face found",
    }
    for name, words in expected.items():
        text, kind = upload(browser, pictures / name)
        assert kind == "error" and words in text, (name, text)
        assert not faces_on_page(browser), name
    text, kind = upload(browser, pictures / "photo.jpg")
    assert kind == "ok" and len(faces_on_page(browser)) == 1, text


def give_file(driver, path, how):
    """Drop ``path`` on the page, or paste it (``how``: "drop" or "paste"), as a browser would hand it over."""
    import base64

    from ferlib.web.browser import status_of, wait_for

    path = Path(path)
    kind = {".png": "image/png", ".jpg": "image/jpeg", ".txt": "text/plain"}[path.suffix]
    driver.execute_script("""
        const [data, name, type, how] = arguments;
        const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, { type }));
        document.getElementById('status').className = 'busy';
        const init = { bubbles: true, cancelable: true };
        if (how === 'drop') {
            document.getElementById('stage').dispatchEvent(new DragEvent('drop', { ...init, dataTransfer: transfer }));
        } else {
            document.body.dispatchEvent(new ClipboardEvent('paste', { ...init, clipboardData: transfer }));
        }""", base64.b64encode(path.read_bytes()).decode("ascii"), path.name, kind, how)
    return wait_for(driver, lambda d: (lambda s: s if s[1] != "busy" else None)(status_of(d)), 60, how)


@pytest.mark.slow
def test_a_photo_can_be_dropped_or_pasted(live, browser, pictures):
    open_page(browser, live.url)
    text, kind = give_file(browser, pictures / "three_faces.png", "drop")
    assert kind == "ok" and len(faces_on_page(browser)) == 3, text
    text, kind = give_file(browser, pictures / "photo.jpg", "paste")
    assert kind == "ok" and len(faces_on_page(browser)) == 1, text
    text, kind = give_file(browser, pictures / "notes.txt", "drop")
    assert kind == "error" and "not an image" in text and not faces_on_page(browser), text


@pytest.mark.slow
def test_the_page_says_when_the_model_server_is_down_or_the_model_is_not_loaded(live, browser, pictures):
    from ferlib.web.browser import upload

    with web_door(dead_backend(), port=0) as down:
        text, kind = open_page(browser, down.url)
        assert kind == "error" and "model server is not answering" in text and "ferlib serve" in text, text
        text, kind = upload(browser, pictures / "photo.jpg")
        assert kind == "error" and "model server is not answering" in text, text
        assert not faces_on_page(browser)
    with web_door(live.backend, model="nosuch", port=0) as wrong:
        text, kind = open_page(browser, wrong.url)
        assert kind == "error" and '"nosuch" is not loaded' in text, text
    # The page's own server gone: said too, and the page does not hang.
    text, kind = upload(browser, pictures / "photo.jpg")
    assert kind == "error" and "page's own server is not answering" in text, text


@pytest.mark.slow
def test_a_refused_camera_is_explained(live, browser):
    from selenium.webdriver.common.by import By

    from ferlib.web.browser import status_of, wait_for

    open_page(browser, live.url)
    button = browser.find_element(By.ID, "webcam")
    button.click()
    text, kind = wait_for(browser, lambda d: (lambda s: s if s[1] == "error" else None)(status_of(d)), 30)
    assert "permission was denied" in text, text
    assert button.get_attribute("aria-pressed") == "false" and button.is_enabled()


@pytest.mark.slow
def test_webcam_frames_are_annotated_live_one_request_at_a_time(live, tmp_path, capsys):
    from selenium.webdriver.common.by import By

    from ferlib.web.browser import chromium, status_of, wait_for

    clip = write_y4m(face_images()[:4], tmp_path / "faces.y4m")
    with chromium(size=(1100, 1000), camera=clip) as driver:
        driver.get(live.url + "/")
        wait_for(driver, lambda d: status_of(d)[1] == "ok", 60, "the page's first check")
        # Count the requests in flight: the page must never have more than one.
        driver.execute_script("""
            window.inflight = 0; window.maxInflight = 0;
            const original = window.fetch;
            window.fetch = async (...args) => {
                window.inflight += 1; window.maxInflight = Math.max(window.maxInflight, window.inflight);
                try { return await original(...args); } finally { window.inflight -= 1; }
            };""")
        driver.find_element(By.ID, "webcam").click()
        stats = lambda d: d.execute_script("return window.ferlibPage.stats()")  # noqa: E731
        wait_for(driver, lambda d: int(stats(d)["frames"]) >= 3, 60, "the first webcam answers")
        start, first = time.perf_counter(), int(stats(driver)["frames"])
        seen = set()
        while time.perf_counter() - start < 8:
            seen.update(top_emotion(face) for face in faces_on_page(driver))
            time.sleep(0.2)
        elapsed, last = time.perf_counter() - start, stats(driver)
        fps = (int(last["frames"]) - first) / elapsed
        latency = float(last["latencyMs"])
        assert status_of(driver)[1] == "ok", status_of(driver)
        assert faces_on_page(driver) and seen, "no face annotated on the webcam frames"
        assert painted(driver, "overlay") > 200 and painted(driver, "timeline") > 1000
        assert "frames/s" in driver.find_element(By.ID, "stats").text
        assert driver.execute_script("return window.maxInflight") == 1
        assert fps > 0.5, fps
        BUILD.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(BUILD / "webcam.png"))
        driver.find_element(By.ID, "webcam").click()
        wait_for(driver, lambda d: d.find_element(By.ID, "webcam").get_attribute("aria-pressed") == "false", 10)
    figures = {"frames_per_second": round(fps, 2), "page_fps": float(last["fps"]), "latency_ms": latency,
               "frames": int(last["frames"]), "emotions_seen": sorted(seen)}
    (BUILD / "webcam.json").write_text(json.dumps(figures, indent=2))
    with capsys.disabled():
        print(f"\nwebcam through the page: {fps:.1f} frames/s, median latency {latency:.0f} ms "
              f"({figures['frames']} frames; emotions shown: {', '.join(sorted(seen))}); screenshot {BUILD / 'webcam.png'}")
