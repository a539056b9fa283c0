"""A screenshot of `minibigr app` after pressing Generate, for docs/app.md; the browser half of tests/test_app.py.

    python benchmarks/app_screenshot.py                  # docs/app.png (needs the [app] extra, chromium, chromedriver)

Starts the app (the shipped model) on a free localhost port, opens it in headless Chromium (Debian's chromium and
chromium-driver packages, driven by selenium), presses Generate, waits for the samples and the reveal animation,
and saves the page.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served(*args: str, timeout: float = 120):
    """`minibigr app ARGS` on a free localhost port in a subprocess; yields its URL, stops it afterwards."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    server = subprocess.Popen([sys.executable, "-m", "minibigr.cli", "app", "--port", str(port), *args], cwd=REPO,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + timeout
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"minibigr app exited: {server.stdout.read()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError(f"minibigr app did not serve within {timeout:.0f} s") from None
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.terminate()
        server.wait(timeout=30)


def chromium(profile: str | Path, width: int = 1280, height: int = 1400):
    """Headless Chromium through selenium, with the flags a closed network needs (no background connections)."""
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--window-size={width},{height}", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)))


def press_generate(driver, url: str, wait: float = 240) -> list:
    """Open the page, press Generate, and return the sample images once they are shown."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, 60).until(ready.element_to_be_clickable((By.ID, "generate"))).click()
    images = WebDriverWait(driver, wait).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#samples img") or False)
    WebDriverWait(driver, wait).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#reveal img") or False)
    return images


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "docs" / "app.png"))
    args = ap.parse_args(argv)
    with served("--device", "cpu") as url, tempfile.TemporaryDirectory() as profile:
        driver = chromium(profile, height=1500)
        try:
            press_generate(driver, url)
            time.sleep(2)                                      # let the animation's first frame paint
            driver.save_screenshot(args.out)
        finally:
            driver.quit()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
