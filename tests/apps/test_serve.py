"""`multimodal serve`: the JSON endpoint, limits and media on a real server on 127.0.0.1, and the page in Chromium."""
import io
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import soundfile
from PIL import Image

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")

from multimodal.apps.api import load_embedding_model as load
from multimodal.apps.embedding import embed_files
from multimodal.apps.search import build_index, open_index
from multimodal.apps.search_server import SearchService, create_app
from tests.apps.test_api import tiny_checkpoint, waveform, write_png

SAMPLE_RATE = 16000


def wav_bytes(samples: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, SAMPLE_RATE, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


EMPTY_WAV = wav_bytes(np.zeros(0, np.float32))  # a header and no samples

MAX_UPLOAD = 100_000
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-headless-shell")
# As root in a container Chromium needs --no-sandbox; the network flags keep it from calling out at start.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    checkpoint = tiny_checkpoint()
    files = [write_png(root / "images" / f"digit-{i}.png", seed=i) for i in range(5)]
    files.append(write_png(root / "images" / "large photo.png", seed=7, size=(300, 420)))
    model = load(checkpoint, precision="fp32")
    embed_files(model, "image", [root / "images"], root / "images.safetensors")
    build_index([root / "images.safetensors"], root / "index", checkpoint=checkpoint)
    return root, files, model


@pytest.fixture(scope="module")
def server(collection):
    """The app under uvicorn on an ephemeral port of 127.0.0.1, in a thread; stopped after the module."""
    root, files, model = collection
    service = SearchService(open_index(root / "index"), model, max_upload_bytes=MAX_UPLOAD)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(service), log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


def request(url: str, data: bytes | None = None, headers: dict | None = None):
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def test_an_uploaded_image_finds_itself_and_its_media(server, collection):
    _, files, _ = collection
    status, headers, body = request(f"{server}/api/search?modality=image&k=3", files[2].read_bytes(),
                                    {"Content-Type": "image/png"})
    assert status == 200 and headers["X-Content-Type-Options"] == "nosniff"
    answer = json.loads(body)
    best = answer["hits"][0]
    assert (best["rank"], best["key"], best["source"]) == (1, str(files[2]), str(files[2].resolve()))
    assert best["score"] == pytest.approx(1.0, abs=1e-4) and len(answer["hits"]) == 3
    status, headers, media = request(server + best["media"])
    assert status == 200 and headers["content-type"] == "image/png" and media == files[2].read_bytes()
    # A large image's thumbnail is at most 256 px; a small one is served as it is.
    large = next(hit for hit in json.loads(request(f"{server}/api/search?text=x&k=6")[2])["hits"]
                 if hit["key"].endswith("large photo.png"))
    status, headers, thumbnail = request(f"{server}{large['media']}?thumb=1")
    assert status == 200 and headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumbnail)).size) == 256


def test_text_queries_and_info(server):
    status, _, body = request(f"{server}/api/info")
    info = json.loads(body)
    assert (info["modality"], info["count"], info["index_type"]) == ("image", 6, "SQfp16")
    assert info["query_modalities"] == ["text", "image", "audio"] and info["max_upload_bytes"] == MAX_UPLOAD
    status, _, body = request(f"{server}/api/search?text=someone%20saying%20seven&k=6")
    answer = json.loads(body)
    assert status == 200 and answer["query"] == {"modality": "text", "text": "someone saying seven"}
    assert len(answer["hits"]) == 6 and [h["rank"] for h in answer["hits"]] == [1, 2, 3, 4, 5, 6]
    scores = [h["score"] for h in answer["hits"]]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("path, data, status, message", [
    ("/api/search?modality=image", b"\0" * (MAX_UPLOAD + 1), 413, "the limit is 100000"),
    ("/api/search?modality=image", b"GIF89a but broken", 400, "the image query cannot be read"),
    ("/api/search?modality=video", b"x", 400, "modality must be image or audio"),
    ("/api/search?modality=audio", b"", 400, "the upload is empty"),
    ("/api/search?modality=audio", EMPTY_WAV, 400, "the audio query cannot be read: the clip holds no audio samples"),
    ("/api/search?text=" + "a" * 1001, None, 400, "at most 1000 characters"),
    ("/api/search?text=seven&k=0", None, 400, "k must be an integer from 1 to 100"),
    ("/api/search?text=%20", None, 400, "give a text query"),
])
def test_bad_queries_are_refused_with_a_reason(server, path, data, status, message):
    got, _, body = request(server + path, data)
    assert got == status and message in json.loads(body)["error"]


@pytest.mark.parametrize("path", ["/media/6", "/media/-1", "/media/..%2F..%2Fetc%2Fpasswd", "/media/%2Fetc%2Fpasswd",
                                  "/media/1/../../../etc/passwd", "/etc/passwd", "/media/0x1"])
def test_nothing_outside_the_collection_is_served(server, path):
    status, _, body = request(server + path)
    assert status == 404 and b"root:" not in body


def test_an_uploaded_clip_shorter_than_a_patch_is_searched_as_the_api_embeds_it(server, collection):
    """0.1 s is 8 frames, half the tiny preset's patch: padded with silence, as every command pads it."""
    _, _, model = collection
    clip = wav_bytes(waveform(1, 0.1).numpy())
    status, _, body = request(f"{server}/api/search?modality=audio&k=3", clip, {"Content-Type": "audio/wav"})
    assert status == 200
    expected = open_index(collection[0] / "index").search(model.embed_audio([clip]).numpy(), 3)[0]
    assert [(hit["key"], hit["score"]) for hit in json.loads(body)["hits"]] == [
        (hit.key, pytest.approx(hit.score, abs=1e-5)) for hit in expected]


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ctrl_c_stops_the_server_with_one_line_and_status_0(collection):
    root, _, _ = collection
    port = free_loopback_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "multimodal", "serve", "--index", str(root / "index"), "--host", "127.0.0.1",
         "--port", str(port), "--precision", "fp32"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        # Served once /api/info answers: uvicorn's own Ctrl-C handling is then in place.
        while not (_listening(port) and request(f"http://127.0.0.1:{port}/api/info")[0] == 200):
            assert time.monotonic() < deadline and process.poll() is None, process.communicate(timeout=10)
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert out == "" and "Traceback" not in err and "KeyboardInterrupt" not in err
    assert err.splitlines() == [f"serving 6 image rows of {root / 'index'} on http://127.0.0.1:{port}/ (Ctrl-C stops)",
                                "multimodal serve: stopped"]


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_the_server_binds_loopback_by_default():
    from multimodal.cli import build_parser

    args = build_parser().parse_args(["serve", "--index", "somewhere"])
    assert (args.host, args.port) == ("127.0.0.1", 8000)


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package (apt-get install chromium)")
def test_the_page_in_a_headless_browser(server, collection, tmp_path):
    playwright_api = pytest.importorskip("playwright.sync_api")
    _, files, _ = collection
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            # The page runs under its own Content-Security-Policy: waits go through locators, never eval.
            page = browser.new_page(viewport={"width": 1100, "height": 700})
            expect = playwright_api.expect
            expect.set_options(timeout=20_000)
            page.goto(server + "/")
            expect(page.locator("#about")).to_contain_text("6 image items, SQfp16")
            # An upload: the image itself comes first, every thumbnail loaded.
            page.set_input_files("#file", str(files[3]))
            expect(page.locator("#status")).to_have_text("6 hits for image digit-3.png")
            expect(page.locator(".hit .key").first).to_have_text(str(files[3]))
            expect(page.locator(".hit .score").first).to_have_text("#1 1.000")
            for image in page.locator(".hit img").all():
                image.scroll_into_view_if_needed()
                expect(image).to_have_js_property("complete", True)
                assert image.evaluate("image => image.naturalWidth") > 0
            screenshot = tmp_path / "page.png"
            page.screenshot(path=str(screenshot), full_page=True)
            assert Image.open(screenshot).size[0] == 1100
            # A text query from the box, and an error shown on the page rather than a broken grid.
            page.fill("#text", "a photo of a cat")
            page.click("#search")
            expect(page.locator("#status")).to_have_text("6 hits for “a photo of a cat”")
            expect(page.locator(".hit")).to_have_count(6)
            broken = tmp_path / "broken.png"
            broken.write_bytes(b"\x89PNG\r\n\x1a\n but nothing more")
            page.set_input_files("#file", str(broken))
            expect(page.locator("#status.error")).to_contain_text("the image query cannot be read")
            expect(page.locator(".hit")).to_have_count(0)
        finally:
            browser.close()


def test_media_of_shard_samples_and_sounds(tmp_path):
    """Rows from a tar shard are read from it by key; sounds are served as they are; pipe: shards never run."""
    from multimodal.apps.search.media import MediaReader
    from tests.cli.test_search_cli import png_bytes, write_tar

    picture = png_bytes(3)
    shard = write_tar(tmp_path / "web-000.tar", [("a/1.png", png_bytes(1)), ("a/1.txt", b"one"), ("a/2.png", picture)])
    reader = MediaReader("image")
    assert reader.read("a/2", shard) == (picture, "image/png")
    assert reader.read("a/9", shard) is None and reader.read("a/1", f"pipe:cat {shard}") is None
    clip = tmp_path / "clip.wav"
    clip.write_bytes(b"RIFF....WAVE")
    assert MediaReader("audio").read(str(clip), str(clip)) == (b"RIFF....WAVE", "audio/wav")
    assert MediaReader("text").read("captions.txt:3", str(clip)) is None  # a caption has no media
    reader.close()


def test_a_large_transparent_images_thumbnail_is_composited_onto_white():
    """Decoded as training decodes it: a transparent background is white, not the black PIL's RGB convert gives."""
    from PIL import Image

    from multimodal.apps.search_server import THUMBNAIL_PIXELS, _thumbnail

    picture = Image.new("RGBA", (600, 300), (0, 0, 0, 0))
    picture.paste((200, 30, 30, 255), (250, 100, 350, 200))  # a red square in the middle
    encoded = io.BytesIO()
    picture.save(encoded, format="PNG")
    data, media = _thumbnail("image", encoded.getvalue(), "image/png")
    thumbnail = Image.open(io.BytesIO(data))
    assert media == "image/jpeg" and thumbnail.size == (THUMBNAIL_PIXELS, THUMBNAIL_PIXELS // 2)
    assert min(thumbnail.getpixel((2, 2))) >= 250  # white
    red, green, _ = thumbnail.getpixel((THUMBNAIL_PIXELS // 2, THUMBNAIL_PIXELS // 4))
    assert red > 180 and green < 60
    # A small picture is served as it is.
    small = io.BytesIO()
    picture.resize((100, 50)).save(small, format="PNG")
    assert _thumbnail("image", small.getvalue(), "image/png") == (small.getvalue(), "image/png")


def test_an_uploaded_svg_is_searched_as_the_png_it_rasterises_to(server):
    pytest.importorskip("resvg_py")
    from multimodal.data.preprocess.svg import rasterise_svg
    from tests.apps.test_svg_inputs import DRAWING

    answers = []
    for data, kind in ((DRAWING, "image/svg+xml"), (rasterise_svg(DRAWING), "image/png")):
        status, _, body = request(f"{server}/api/search?modality=image&k=6", data, {"Content-Type": kind})
        assert status == 200, body
        answers.append(json.loads(body)["hits"])
    assert [hit["key"] for hit in answers[0]] == [hit["key"] for hit in answers[1]]
    assert [hit["score"] for hit in answers[0]] == pytest.approx([hit["score"] for hit in answers[1]], abs=1e-5)
