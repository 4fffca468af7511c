"""Headless Chromium on the web page: screenshots (notebook 05, the README) and the browser tests.

Uses the system's ``chromium`` and ``chromedriver`` (Debian: ``apt-get install chromium
chromium-driver``) through selenium (``pip install -e '.[dev]'``); nothing is downloaded.
:func:`find_chromium` raises :class:`BrowserMissing`, which says what is missing, when they are not there.
"""
import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path

from ..errors import FERError

#: Flags that work headless, as root, without a display or a network.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                  "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-extensions", "--mute-audio",
                  "--hide-scrollbars")
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
#: A phone-sized window (an iPhone 12-15's CSS pixels).
PHONE = (390, 844)


class BrowserMissing(FERError):
    """No headless browser to drive: the message says what to install."""


def find_chromium():
    """``(browser, chromedriver)`` paths, or :class:`BrowserMissing` with the reason."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        raise BrowserMissing("selenium is not installed (pip install -e '.[dev]')") from None
    browser = next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)
    driver = shutil.which("chromedriver")
    missing = [name for name, path in (("chromium", browser), ("chromedriver", driver)) if not path]
    if missing:
        raise BrowserMissing(f"{' and '.join(missing)} not found (Debian: apt-get install chromium chromium-driver; "
                             ".ci/run installs them)")
    return browser, driver


@contextlib.contextmanager
def chromium(size=(1100, 900), camera=None):
    """A headless Chromium (a selenium WebDriver), quit on leaving the block.

    ``camera``: None (no camera flags), ``"deny"`` (a camera whose permission is refused), or the path of
    a ``.y4m`` clip that the browser's fake camera plays in a loop, permission granted.
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = find_chromium()
    profile = tempfile.mkdtemp(prefix="ferlib-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={size[0]},{size[1]}")
    if camera == "deny":
        options.add_argument("--use-fake-device-for-media-stream")
        options.add_argument("--deny-permission-prompts")
    elif camera is not None:
        options.add_argument("--use-fake-ui-for-media-stream")
        options.add_argument("--use-fake-device-for-media-stream")
        options.add_argument(f"--use-file-for-fake-video-capture={Path(camera).resolve()}")
    service = Service(executable_path=driver_path, log_output=os.devnull)
    driver = None
    try:
        driver = webdriver.Chrome(options=options, service=service)
        driver.set_page_load_timeout(60)
        yield driver
    finally:
        if driver is not None:
            driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def set_viewport(driver, width, height, mobile=False, scale=1):
    """Make the page's viewport ``width`` x ``height`` CSS pixels (a phone: ``mobile=True``)."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": int(width), "height": int(height), "deviceScaleFactor": scale, "mobile": mobile})


def page_height(driver):
    return int(driver.execute_script("return Math.ceil(document.documentElement.getBoundingClientRect().height)"))


def wait_for(driver, condition, timeout=60, what="the page"):
    """Poll ``condition(driver)`` until it is true (returned), or raise FERError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition(driver)
        except Exception:  # noqa: BLE001  (an element replaced while read: try again)
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            status = driver.execute_script("var s = document.getElementById('status'); return s && s.textContent;")
            raise FERError(f"{what}: still waiting after {timeout} s (status: {status!r})")
        time.sleep(0.1)


def status_of(driver):
    """``(text, kind)`` of the page's ``#status``: kind is info, busy, ok or error."""
    return tuple(driver.execute_script("var s = document.getElementById('status'); return [s.textContent, s.className];"))


def wait_ready(driver, timeout=60):
    """Wait until the page has asked the model server (its status is no longer busy); the status."""
    return wait_for(driver, lambda d: (lambda s: s if s[1] != "busy" else None)(status_of(d)), timeout,
                    "the page's first check of the model server")


def upload(driver, path, timeout=60):
    """Give ``path`` to the page's file input; wait for the answer. Returns the status ``(text, kind)``."""
    from selenium.webdriver.common.by import By

    driver.execute_script("document.getElementById('status').className = 'busy';")
    driver.find_element(By.ID, "file").send_keys(str(Path(path).resolve()))
    return wait_for(driver, lambda d: (lambda s: s if s[1] != "busy" else None)(status_of(d)), timeout,
                    f"the answer about {Path(path).name}")


def screenshot(url, photo, out_path, size=(1100, 900), phone=False, timeout=60):
    """Open the page at ``url``, send it ``photo``, and save a PNG of the answered page to ``out_path``.

    ``phone=True`` uses a phone-sized viewport (:data:`PHONE`). The PNG is as tall as the page.
    Returns ``(out_path, status text)``."""
    with chromium(size) as driver:
        width = PHONE[0] if phone else size[0]
        set_viewport(driver, width, PHONE[1] if phone else size[1], mobile=phone)
        driver.get(url.rstrip("/") + "/")
        wait_ready(driver, timeout)
        text, kind = upload(driver, photo, timeout)
        if kind != "ok":
            raise FERError(f"the page did not answer about {photo}: {text}")
        wait_for(driver, lambda d: d.execute_script("return document.getElementById('photo').complete"), timeout)
        set_viewport(driver, width, max(page_height(driver), 200), mobile=phone)
        time.sleep(0.3)  # the overlay is redrawn on resize
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out_path))
    return out_path, text
