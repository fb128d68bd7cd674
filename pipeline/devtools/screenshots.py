"""Screenshots of every console page and a buyer's tracking page in Debian's Chromium (headless,
through chromedriver), at a desktop's width and a phone's, for the README (docs/screenshots/).

    .venv/bin/python -m pipeline.devtools.screenshots --console http://127.0.0.1:6070 \\
        --token-file var/run/viewer.token --tracking http://127.0.0.1:6080/t/<code> --out docs/screenshots

Needs a running sink with data (`scripts/dev demo`, or the console's browser test, which calls
`take_all` after its replay) and `orderstream stack up --browser`. The viewport is set through the
DevTools protocol: headless Chromium will not make a window narrower than 500 px.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

TIERS = ("strategic", "tactical", "execution")
# (suffix, width, height): the README's desktop pictures keep their names, the phone's get -phone
SIZES = (("", 1400, 900), ("-phone", 390, 844))
MAX_HEIGHT = 3000   # a long page is cut here rather than making a huge PNG


def open_chromium(chromium: str, chromedriver: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--hide-scrollbars",
                f"--user-data-dir={tempfile.mkdtemp(prefix='orderstream-shots-')}", "--window-size=1400,900",
                "--lang=zh-CN"):
        options.add_argument(arg)
    d = webdriver.Chrome(service=Service(chromedriver), options=options)
    d.set_page_load_timeout(60)
    return d


def set_viewport(d, width: int, height: int) -> None:
    """The page's layout viewport, a phone's included (mobile: a phone's meta viewport applies)."""
    d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600})


def reset_viewport(d) -> None:
    d.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def sign_in(d, console: str, token: str) -> None:
    """A session cookie from the sign-in form every console page answers without one."""
    from selenium.webdriver.common.by import By

    d.delete_all_cookies()
    d.get(f"{console}/console/strategic")
    d.find_element(By.ID, "signin-token").send_keys(token)
    d.find_element(By.ID, "signin-submit").click()
    deadline = time.monotonic() + 30
    while not d.find_elements(By.ID, "console"):
        if d.find_elements(By.ID, "signin-message") or time.monotonic() > deadline:
            raise RuntimeError("the console refused the token (or did not answer)")
        time.sleep(0.2)


def capture(d, url: str, path: Path, width: int, height: int) -> Path:
    """The whole page at `url` (up to MAX_HEIGHT) at `width`, into `path`."""
    set_viewport(d, width, height)
    d.get(url)
    time.sleep(0.5)  # the console's script has asked who is signed in
    full = min(max(int(d.execute_script("return document.documentElement.scrollHeight")), height), MAX_HEIGHT)
    set_viewport(d, width, full)
    time.sleep(0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not d.save_screenshot(str(path)):
        raise RuntimeError(f"chromium took no screenshot of {url}")
    set_viewport(d, width, height)
    return path


def take_all(d, console: str, token: str, tracking: str | None, out: Path) -> list[Path]:
    """Every console page and (when given) a tracking page, at each of SIZES: the paths written."""
    sign_in(d, console, token)
    written = []
    try:
        for suffix, width, height in SIZES:
            for tier in TIERS:
                written.append(capture(d, f"{console}/console/{tier}", out / f"{tier}{suffix}.png", width, height))
            if tracking:
                written.append(capture(d, tracking, out / f"tracking{suffix}.png", width, height))
    finally:
        reset_viewport(d)
    return written


def main(argv: list[str] | None = None) -> None:
    from pipeline.devtools import stack

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--console", default="http://127.0.0.1:6070", help="The sink's operator surface.")
    parser.add_argument("--token-file", type=Path, required=True, help="A file holding a viewer's (or any) token.")
    parser.add_argument("--tracking", default="", help="A buyer's tracking page URL (/t/<code> on the public port).")
    parser.add_argument("--out", type=Path, default=Path("docs/screenshots"))
    args = parser.parse_args(argv)
    paths = stack.ensure_browser_installed()
    d = open_chromium(paths["chromium"], paths["chromedriver"])
    try:
        for path in take_all(d, args.console.rstrip("/"), args.token_file.read_text().strip(), args.tracking or None,
                             args.out):
            print(path)
    finally:
        d.quit()


if __name__ == "__main__":
    main()
