"""`latent-fit serve` in a real browser (Debian's chromium driven by Playwright): upload,
projection, paint, w_r, apply, directions, sweep, save, and bad uploads, as a person would.
A screenshot of every state is kept in the test's tmp_path. Skips only where no browser runs."""

import re
import shutil
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from latent_fit import read_latent_file
from latent_fit.serve import Editor, make_server

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT = 30_000  # ms for one state of the page to appear
PNG = re.compile("^data:image/png;base64,")

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install -e '.[test]')")
expect, sync_playwright = sync_api.expect, sync_api.sync_playwright
expect.set_options(timeout=TIMEOUT)


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


@pytest.fixture(scope="module")
def browser():
    exe = _chromium()
    if exe is None:
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def server(G, tmp_path, request):
    """The editor with small step counts (w_r units: the test's param, default raw), served from
    a thread on a free port."""
    editor = Editor(
        G, tmp_path / "out", steps=40, starts=2, loss="mse", pca_samples=300, wr_units=getattr(request, "param", "raw")
    )
    (tmp_path / "out").mkdir()
    srv = make_server(editor, "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv, tmp_path / "out"
    srv.shutdown()
    editor.queue.close()
    srv.server_close()


@pytest.fixture
def page(browser, server):
    p = browser.new_page(viewport={"width": 1280, "height": 1000})
    p.set_default_timeout(TIMEOUT)
    p.goto(server[0].url)
    p.wait_for_selector("body[data-ready='1']")
    yield p
    p.close()


def _by(page, testid):
    return page.locator(f"[data-testid={testid}]")


def _shot(page, tmp_path, name):
    page.screenshot(path=str(tmp_path / "screens" / f"{name}.png"), full_page=True)


def _paint(page, fraction=(0.2, 0.8, 0.1, 0.4)):
    """Drag the brush back and forth over a band of the canvas (x0, x1, y0, y1 as fractions)."""
    box = _by(page, "paint").bounding_box()
    x0, x1, y0, y1 = fraction
    page.mouse.move(box["x"] + x0 * box["width"], box["y"] + y0 * box["height"])
    page.mouse.down()
    for i, y in enumerate(np.linspace(y0, y1, 6)):
        page.mouse.move(box["x"] + (x1 if i % 2 == 0 else x0) * box["width"], box["y"] + y * box["height"], steps=5)
    page.mouse.up()


def _image_src(page, testid):
    return _by(page, testid).get_attribute("src") or ""


def test_project_paint_apply_save(page, server, tmp_path):
    (tmp_path / "screens").mkdir()
    _, out = server
    _shot(page, tmp_path, "01_start")
    _by(page, "upload").set_input_files(str(SAMPLES / "targets" / "face_01.png"))
    expect(_by(page, "projection")).to_have_attribute("src", PNG)
    expect(_by(page, "message")).to_contain_text("Projected face_01")
    _shot(page, tmp_path, "02_projected")

    _by(page, "colour").fill("#f0e040")
    _by(page, "brush").fill("40")
    _paint(page)
    _shot(page, tmp_path, "03_painted")

    _by(page, "wr").fill("0.001")
    _by(page, "apply").click()
    expect(page.locator("#result-info")).to_contain_text("w_r 0.001 ")
    first = _image_src(page, "result")
    assert first.startswith("data:image/png") and first != _image_src(page, "projection")
    _shot(page, tmp_path, "04_applied")

    # a new w_r runs the edit again by itself (change event of a typed value)
    _by(page, "wr").fill("0.3")
    _by(page, "wr").dispatch_event("change")
    expect(page.locator("#result-info")).to_contain_text("w_r 0.3 ")
    assert _image_src(page, "result") != first
    assert float(page.locator("#wr-slider").input_value()) == pytest.approx(np.log10(0.3), abs=0.03)
    _shot(page, tmp_path, "05_wr_changed")

    _by(page, "stem").fill("../my face")
    _by(page, "save").click()
    expect(_by(page, "saved")).to_contain_text("saved my_face.npz and my_face.png")
    _shot(page, tmp_path, "06_saved")
    assert sorted(p.name for p in out.iterdir()) == ["my_face.npz", "my_face.png"]
    d = read_latent_file(out / "my_face.npz")
    assert (d["space"], d["generator"]) == ("z", "digiface-dcgan64")
    assert d["latent"].shape == d["latent_init"].shape == (100,)
    assert np.linalg.norm(d["latent"] - d["latent_init"]) > 1e-3  # the edit moved it
    assert d["config"]["edit"]["wr"] == pytest.approx(0.3) and d["metrics"]["wr"] == pytest.approx(0.3)
    assert d["config"]["projection"]["steps"] == 40
    assert Image.open(out / "my_face.png").size == (64, 64)

    _by(page, "save").click()  # again: never over the first file
    expect(_by(page, "saved")).to_contain_text("saved my_face_2.npz and my_face_2.png")
    expect(_by(page, "saved")).to_contain_text("my_face.npz or my_face.png is there already: kept")
    assert _by(page, "stem").input_value() == "my_face"
    assert np.array_equal(read_latent_file(out / "my_face_2.npz")["latent"], d["latent"])


def test_directions_and_sweep(page, tmp_path):
    (tmp_path / "screens").mkdir()
    _by(page, "sample").select_option("face_02")
    expect(_by(page, "projection")).to_have_attribute("src", PNG)
    _by(page, "pca").click()
    _by(page, "direction-0").wait_for()
    before = _image_src(page, "result")
    _by(page, "direction-0").fill("2.5")
    expect(_by(page, "result")).not_to_have_attribute("src", before)
    _paint(page, (0.3, 0.7, 0.6, 0.9))
    _by(page, "sweep").click()
    expect(page.locator("[data-testid=chart] circle")).to_have_count(5)
    expect(page.locator("#sweep-info")).to_contain_text("Suggested")
    _shot(page, tmp_path, "07_directions_sweep")
    page.locator("[data-testid=chart] circle").nth(4).click()  # a point sets its w_r
    assert _by(page, "wr").input_value() == "1"


@pytest.mark.parametrize("server", ["relative"], indirect=True)
def test_relative_wr_units(page, tmp_path):
    """serve --wr-units relative: the page's w_r range, default and label follow, and the result
    line shows the raw weight the edit used."""
    (tmp_path / "screens").mkdir()
    expect(page.locator("#wr-units")).to_have_text(" (relative)")
    assert _by(page, "wr").input_value() == "2"
    slider = page.locator("#wr-slider")
    assert (slider.get_attribute("min"), slider.get_attribute("max")) == ("-2", "2")
    assert float(slider.input_value()) == pytest.approx(np.log10(2), abs=0.03)
    _by(page, "sample").select_option("face_03")
    expect(_by(page, "projection")).to_have_attribute("src", PNG)
    _paint(page)
    _by(page, "apply").click()
    expect(page.locator("#result-info")).to_contain_text(re.compile(r"w_r 2 \(raw 0\.0\d+\)"))
    _shot(page, tmp_path, "08_relative")


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels but holds almost no data (a decompression bomb)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_bad_uploads_get_a_clear_message(page, tmp_path):
    (tmp_path / "screens").mkdir()
    upload = _by(page, "upload")
    upload.set_input_files(files=[{"name": "notes.png", "mimeType": "image/png", "buffer": b"just text"}])
    expect(page.locator("#status")).to_have_class(re.compile("error"))
    expect(_by(page, "message")).to_contain_text("notes.png: not an image")
    _shot(page, tmp_path, "08_not_an_image")
    upload.set_input_files(files=[{"name": "bomb.png", "mimeType": "image/png", "buffer": _png_header(20000, 20000)}])
    expect(_by(page, "message")).to_contain_text("bomb.png: ")
    expect(_by(page, "message")).to_contain_text("decompression bomb")
    assert _by(page, "apply").is_disabled()


def test_the_page_loads_with_no_console_error(browser, server, monkeypatch):
    """No error in the page's console and no failed request from loading the page to a
    projection; the favicon, which the browser itself fetches (unseen by Playwright), is served."""
    handler, answered = server[0].RequestHandlerClass, []
    send = handler.send_response
    monkeypatch.setattr(
        handler,
        "send_response",
        lambda self, code, message=None: (answered.append((self.path.split("?")[0], code)), send(self, code, message)),
    )
    p = browser.new_page()
    errors = []
    p.on("console", lambda m: m.type == "error" and errors.append(m.text))
    p.on("pageerror", lambda e: errors.append(str(e)))
    try:
        p.goto(server[0].url)
        p.wait_for_selector("body[data-ready='1']")
        _by(p, "sample").select_option("face_00")
        expect(_by(p, "projection")).to_have_attribute("src", PNG)
        for _ in range(50):
            if ("/favicon.ico", 200) in answered:
                break
            p.wait_for_timeout(100)
        assert ("/favicon.ico", 200) in answered, answered
        assert errors == [] and all(code < 400 for _, code in answered), (errors, answered)
    finally:
        p.close()


def test_a_whole_photo_pick_a_face_and_save_the_edited_photo(page, server, tmp_path):
    """Upload a photo with two faces: a box on each (the largest chosen and projected), click
    the other, see its projection and the edited photo, save the photo files with it."""
    from test_serve import two_faces

    (tmp_path / "screens").mkdir()
    _, out = server
    Image.fromarray(two_faces()).save(tmp_path / "pair.png")
    _by(page, "upload").set_input_files(str(tmp_path / "pair.png"))
    expect(_by(page, "photos")).to_be_visible()
    expect(page.locator("[data-testid=boxes] button")).to_have_count(2)
    expect(_by(page, "face-0")).to_have_class("chosen")
    expect(_by(page, "message")).to_contain_text("Projected pair. ")
    expect(_by(page, "photo-result")).to_have_attribute("src", PNG)
    _shot(page, tmp_path, "09_photo_projected")

    first = _image_src(page, "target")
    _by(page, "face-1").click()
    expect(_by(page, "message")).to_contain_text("Projected pair_face2")
    expect(_by(page, "face-1")).to_have_class("chosen")
    assert _image_src(page, "target") != first
    _paint(page)
    _by(page, "apply").click()
    expect(page.locator("#result-info")).to_contain_text("w_r 0.01 ")
    _shot(page, tmp_path, "10_photo_edited")

    _by(page, "save").click()
    expect(_by(page, "saved")).to_contain_text(
        "pair_face2_photo.png, pair_face2_aligned.png and pair_face2_original.png"
    )
    names = ["pair_face2" + s for s in (".npz", ".png", "_photo.png", "_aligned.png", "_original.png")]
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    assert Image.open(out / "pair_face2_photo.png").size == (480, 260)
    _shot(page, tmp_path, "11_photo_saved")

    _by(page, "upload").set_input_files(str(SAMPLES / "targets" / "face_01.png"))  # an aligned crop: as before
    expect(_by(page, "message")).to_contain_text("Projected face_01")
    expect(_by(page, "photos")).to_be_hidden()
    expect(_by(page, "note")).to_have_text("")
    Image.new("RGB", (200, 120), (128, 128, 128)).save(tmp_path / "wall.png")
    _by(page, "upload").set_input_files(str(tmp_path / "wall.png"))  # no face: centre-cropped, with a line
    expect(_by(page, "note")).to_have_text("no face found in wall.png: centre-cropped, not aligned")
    expect(_by(page, "message")).to_contain_text("Projected wall")
    _shot(page, tmp_path, "12_no_face")
