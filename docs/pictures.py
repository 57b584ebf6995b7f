"""Redraws the README's pictures from a checkpoint trained on the demo (``make train``).

* ``docs/search-page.png``: ``multimodal serve`` over the held-out MNIST images, queried
  with the text "seven";
* ``docs/eval-gallery.png``: the top of the gallery ``multimodal eval --task zeroshot``
  writes for the same images.

Needs the serve extra, Playwright (both in the test extra) and a Chromium
(``apt-get install chromium``). Run:
``python docs/pictures.py runs/<run>/checkpoints/step-0001200``.
"""
from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from multimodal.data.demo.dataset import CLASS_NAMES, build_demo

DOCS = Path(__file__).resolve().parent
QUERY = "seven"
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def command(*args: str) -> None:
    """A ``multimodal`` command in this interpreter; stops the script if it fails."""
    subprocess.run([sys.executable, "-m", "multimodal", *args], check=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(port: int, server: subprocess.Popen, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"multimodal serve exited with status {server.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"multimodal serve did not listen on port {port} within {seconds:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a checkpoint directory trained on the demo")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-headless-shell")
    if chromium is None:
        raise SystemExit("needs a Chromium: apt-get install chromium")
    from playwright.sync_api import expect, sync_playwright

    images = build_demo().image_val
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        command("embed", "--checkpoint", args.checkpoint, "--modality", "image", "--input", images,
                "--output", str(scratch / "emb"))
        command("index", "--input", str(scratch / "emb"), "--modality", "image", "--checkpoint", args.checkpoint,
                "--shards", images, "--output", str(scratch / "idx"))
        command("eval", "--checkpoint", args.checkpoint, "--task", "zeroshot", "--modality", "image",
                "--data", images, "--labels", ",".join(CLASS_NAMES), "--output", str(scratch / "eval.json"))
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "multimodal", "serve", "--index", str(scratch / "idx"),
                                   "--port", str(port)])
        try:
            wait_for(port, server)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=chromium, args=BROWSER_ARGS, headless=True)
                page = browser.new_page(viewport={"width": 1040, "height": 620})
                page.goto(f"http://127.0.0.1:{port}/")
                page.fill("#text", QUERY)
                page.click("#search")
                expect(page.locator("#status")).to_contain_text(QUERY, timeout=60_000)
                for image in page.locator(".hit img").all()[:10]:
                    expect(image).to_have_js_property("complete", True)
                page.screenshot(path=str(DOCS / "search-page.png"))
                gallery = browser.new_page(viewport={"width": 1100, "height": 760})
                gallery.goto((scratch / "eval.gallery.html").as_uri())
                gallery.screenshot(path=str(DOCS / "eval-gallery.png"))
                browser.close()
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"wrote {DOCS / 'search-page.png'} and {DOCS / 'eval-gallery.png'}")


if __name__ == "__main__":
    main()
