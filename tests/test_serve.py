"""`latent-fit serve` without a browser: the HTTP API end to end, the device queue's
cancellation of stale runs, the checks on uploads and names, and the --encoder hook."""

import base64
import contextlib
import http.client
import io
import json
import socket
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latent_fit import LatentFitError, read_latent_file
from latent_fit.images import load_image
from latent_fit.serve import Editor, load_start_encoder, make_server
from latent_fit.serve.inputs import decode_strokes, safe_stem
from latent_fit.serve.jobqueue import DeviceQueue

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _strokes(size=256) -> str:
    """A painted layer: the top half opaque dark red, the bottom half untouched (transparent)."""
    a = np.zeros((size, size, 4), np.uint8)
    a[: size // 2] = (120, 20, 20, 255)
    return "data:image/png;base64," + base64.b64encode(_png(a)).decode()


def _bomb(width: int, height: int) -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


# --- what the browser sends ---------------------------------------------------------------------


def test_stems_never_leave_out():
    assert safe_stem("../../etc/passwd") == "passwd"
    assert safe_stem("C:\\photos\\my face.JPG") == "my_face"
    assert safe_stem(".hidden") == "hidden"
    assert safe_stem("...") == safe_stem("") == safe_stem(None) == "image"
    assert safe_stem("a" * 300 + ".png") == "a" * 80


def test_bad_uploads_are_refused_with_one_line():
    """Uploads go through images.load_image, as the CLI's files do."""
    good = load_image(_png(np.full((100, 80, 3), 200, np.uint8)), 64, name="x.png")
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert good.shape == (3, 64, 64) and float(good.max()) <= 1
    cases = [
        (b"just text", "not an image"),
        (_bomb(9000, 8000), "decompression bomb"),
        (_bomb(30000, 30000), "decompression bomb"),
        (_png(noise)[:6000], "truncated"),
    ]
    for data, reason in cases:
        with pytest.raises(LatentFitError, match=reason) as e:
            load_image(data, 64, name="x.png")
        assert str(e.value).startswith("x.png: ") and "\n" not in str(e.value)


def test_strokes_are_the_request_and_their_footprint_the_mask():
    request, mask = decode_strokes(_strokes(), 64)
    assert request.shape == (3, 64, 64) and mask.shape == (1, 64, 64)
    assert float(mask[:, :30].min()) == 1 and float(mask[:, 34:].max()) == 0
    assert torch.allclose(request[:, :30, :], torch.tensor([120, 20, 20]).view(3, 1, 1) / 127.5 - 1, atol=1e-5)
    with pytest.raises(LatentFitError, match="nothing painted"):
        decode_strokes("data:image/png;base64," + base64.b64encode(_png(np.zeros((64, 64, 4), np.uint8))).decode(), 64)
    with pytest.raises(LatentFitError, match="PNG data URL"):
        decode_strokes("file:///etc/passwd", 64)


# --- the device queue ---------------------------------------------------------------------------


def _until(queue, job, states=("done", "error", "cancelled"), timeout=60):
    snap, t0 = queue.wait(job.id, -1, 0), time.time()
    while snap["state"] not in states and time.time() - t0 < timeout:
        snap = queue.wait(job.id, snap["version"], 5)
    return snap


def test_a_newer_request_cancels_the_stale_runs_of_its_page():
    q = DeviceQueue()
    started = threading.Event()

    def slow(job):  # a loop that reports progress, as project() does
        started.set()
        for i in range(2000):
            job.progress(i)
            time.sleep(0.005)
        return {"finished": True}

    try:
        running = q.submit("page-a", "edit", slow)
        started.wait(10)
        queued = q.submit("page-a", "edit", slow)
        other = q.submit("page-b", "edit", lambda job: {"page": "b"})
        newest = q.submit("page-a", "edit", lambda job: {"n": 3})
        assert _until(q, running)["state"] == "cancelled"
        assert _until(q, queued)["state"] == "cancelled"
        assert _until(q, other)["result"] == {"page": "b"}  # another page's work goes on
        assert _until(q, newest)["result"] == {"n": 3}
        broken = q.submit("page-a", "edit", lambda job: 1 / 0)
        assert "internal error in edit: ZeroDivisionError" in _until(q, broken)["error"]
    finally:
        q.close()


def test_editor_in_relative_units(G, tmp_path):
    """serve --wr-units relative: the page's range and default are relative, and an edit's raw
    weight is w_r times wr_factor at the page's projection."""
    from latent_fit.images import load_image
    from latent_fit.jacobian import wr_factor

    editor = Editor(G, tmp_path, steps=10, starts=1, loss="mse", wr_units="relative")
    try:
        info = editor.info()
        assert (info["wr_units"], info["wr"], info["sweep_wrs"][0], info["sweep_wrs"][-1]) == (
            "relative",
            2.0,
            0.01,
            100,
        )
        target = load_image(SAMPLES / "targets" / "face_00.png", G.resolution)
        assert _until(editor.queue, editor.submit_projection("p", target, "face_00", None))["state"] == "done"
        snap = _until(editor.queue, editor.submit_edit("p", target.flip(2), torch.ones(1, 64, 64), 2.0))
        factor = float(wr_factor(G, editor.page("p").projection[None], names=["face_00"])[0])
        assert snap["result"]["metrics"]["wr_effective"] == pytest.approx(2.0 * factor, rel=1e-4)
    finally:
        editor.queue.close()


# --- the HTTP API ---------------------------------------------------------------------------------


@pytest.fixture
def api(G, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with _served(Editor(G, out, steps=30, starts=2, loss="mse")) as (call, job, _):
        yield call, job, out


@contextlib.contextmanager
def _served(editor):
    """(call, job, port) for the editor served from a thread on a free port."""
    srv = make_server(editor, "127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    port = srv.server_address[1]

    def call(method, path, body=None, ctype="application/json", headers=()):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        data = json.dumps(body).encode() if ctype == "application/json" and body is not None else body
        conn.request(method, path, data, {"Content-Type": ctype, **dict(headers)})
        res = conn.getresponse()
        raw = res.read()
        conn.close()
        return res.status, (json.loads(raw) if res.getheader("Content-Type") == "application/json" else raw)

    def job(path, body, **kw):
        status, answer = call("POST", path, body, **kw)
        assert status == 200, answer
        return _wait(call, answer)

    try:
        yield call, job, port
    finally:
        srv.shutdown()
        editor.queue.close()
        srv.server_close()


def test_api_project_edit_save(api):
    call, job, out = api
    status, page = call("GET", "/")
    assert status == 200 and all(
        f'data-testid="{t}"' in page.decode()
        for t in ("upload", "projection", "paint", "wr", "apply", "result", "save")
    )
    status, info = call("GET", "/api/info")
    assert "face_00" in info["samples"] and info["spaces"] == ["z"]

    up = job(
        "/api/project?page=p1&name=../face.png",
        (SAMPLES / "targets" / "face_03.png").read_bytes(),
        ctype="application/octet-stream",
    )
    assert up["state"] == "done" and up["result"]["stem"] == "face" and up["done"] == 30
    done = job("/api/project", {"page": "p1", "sample": "face_00"})
    assert done["result"]["stem"] == "face_00" and done["result"]["psnr"] > 10
    edited = job("/api/edit", {"page": "p1", "wr": 0.01, "request": _strokes()})
    m = edited["result"]["metrics"]
    assert m["mask_mse_after"] < m["mask_mse_before"] and m["wr"] == 0.01

    status, saved = call("POST", "/api/save", {"page": "p1", "stem": "../../escape"})
    assert status == 200 and saved["files"] == ["escape.npz", "escape.png"]
    assert sorted(p.name for p in out.iterdir()) == ["escape.npz", "escape.png"]
    d = read_latent_file(out / "escape.npz")
    assert d["metrics"]["wr"] == 0.01 and d["config"]["projection"]["steps"] == 30
    assert np.linalg.norm(d["latent"] - d["latent_init"]) == pytest.approx(m["dz_norm"], rel=1e-4)

    status, err = call("POST", "/api/edit", {"page": "nobody", "wr": 0.01, "request": _strokes()})
    assert status == 400 and "no projection on this page yet" in err["error"]


def test_api_refuses_what_it_must(api):
    call, job, out = api
    assert call("GET", "/static/../server.py")[0] == 404
    assert call("GET", "/api/info", headers={"Host": "evil.example:80"})[0] == 403  # DNS rebinding
    status, err = call("POST", "/api/save", {"page": "p"}, headers={"Origin": "http://evil.example"})
    assert status == 403 and "refused" in err["error"]
    status, err = call("POST", "/api/project", {"page": "p", "sample": "../../weights/x"})
    assert status == 400 and "not one of the bundled samples" in err["error"]
    status, err = call(
        "POST",
        "/api/project?page=p&name=big.png",
        b"",
        ctype="application/octet-stream",
        headers={"Content-Length": str(40 * 2**20)},
    )
    assert status == 400 and "larger than the 25 MiB limit" in err["error"]
    status, err = call("POST", "/api/project?page=p&name=b.png", _bomb(20000, 20000), ctype="application/octet-stream")
    assert status == 400 and "decompression bomb" in err["error"]
    for path in ("/api/project", "/api/save?page=p", "/api/edit?page=p&wr=1"):  # no plain web forms
        assert call("POST", path, b"page=p", ctype="application/x-www-form-urlencoded")[0] == 400
    assert not any(out.iterdir())


# --- --encoder ----------------------------------------------------------------------------------


def test_encoder_none_auto_and_path(G, tmp_path):
    assert load_start_encoder("none", G, "z") is None
    assert load_start_encoder("auto", G, "z") is not None  # the bundled generator's encoder
    with pytest.raises(LatentFitError, match="encoder file not found"):
        load_start_encoder(str(tmp_path / "enc.pt"), G, "z")


def test_the_encoder_starts_the_projection(G, in_domain, tmp_path, monkeypatch):
    images, z_true = in_domain
    seen = []

    def load_encoder(spec, G_, space=None):
        seen.append((spec, space))
        return lambda x: (seen.append(tuple(x.shape)), z_true[:1].to(x.device))[1]

    monkeypatch.setattr("latent_fit.serve.editor.load_encoder", load_encoder)
    editor = Editor(G, tmp_path, encoder="enc.pt", steps=20, loss="mse")
    try:
        snap = _until(editor.queue, editor.submit_projection("p", images[0], "face", None))
        assert seen == [("enc.pt", "z"), (1, 3, 64, 64)]
        assert snap["result"]["psnr"] > 25  # it started at the answer (random starts: ~15 dB)
        with editor.queue.lock:
            assert editor.page("p").record["config"]["starts"] == 1
    finally:
        editor.queue.close()


def test_stylegan_in_w_plus(tmp_path):
    """A StyleGAN network in the page: projection in w+, a painted edit, principal directions,
    a direction move and a save whose file carries NVIDIA's `w` layout."""
    G = _tiny_stylegan()
    with torch.no_grad():
        target = G.synthesize(G.sample(1, seed=5, space="w"), "w").clamp(-1, 1)[0]
    editor = Editor(G, tmp_path, steps=30, loss="mse", pca_samples=200)
    try:
        proj = _until(editor.queue, editor.submit_projection("p", target, "sg", "w+"))
        assert proj["state"] == "done" and proj["result"]["space"] == "w+", proj
        request, mask = decode_strokes(_strokes(64), G.resolution)
        assert _until(editor.queue, editor.submit_edit("p", request, mask, 1e-3))["state"] == "done"
        dirs = _until(editor.queue, editor.submit_directions("p"))
        assert dirs["result"]["names"] == [f"PC{k}" for k in range(1, 6)]
        moved = _until(editor.queue, editor.submit_render("p", [2.0, 0, 0, 0, 0]))
        assert moved["result"]["result"] != dirs["result"]["result"]
        editor.save("p")
    finally:
        editor.queue.close()
    d = read_latent_file(tmp_path / "sg.npz")
    assert d["space"] == "w+" and d["latent"].shape == (G.num_ws, 32) and d["w"].shape == (1, G.num_ws, 32)
    assert d["config"]["directions"]["PC1"] == 2.0


def _tiny_stylegan(img_channels=3):
    from latent_fit.generators.stylegan2 import StyleGAN2Generator

    torch.manual_seed(0)
    return StyleGAN2Generator(
        z_dim=32,
        c_dim=0,
        w_dim=32,
        img_resolution=32,
        img_channels=img_channels,
        mapping_kwargs=dict(num_layers=2),
        synthesis_kwargs=dict(channel_base=1024, channel_max=64),
    ).freeze()


def test_a_grayscale_generator_gets_gray_targets_requests_and_files(tmp_path):
    """The page prepares uploads as the CLI does (images.load_image with G.img_channels), paints
    in luma, and saves a mode-L PNG and NVIDIA's `w` layout (G.file_ws)."""
    G = _tiny_stylegan(img_channels=1)
    rgb = np.zeros((40, 48, 3), np.uint8)
    rgb[..., 0] = 255  # pure red: luma 0.299
    with _served(Editor(G, tmp_path, steps=5, starts=1, loss="mse")) as (call, job, _):
        up = job("/api/project?page=g&name=red.png&space=w", _png(rgb), ctype="application/octet-stream")
        assert up["state"] == "done", up
        target = Image.open(io.BytesIO(base64.b64decode(up["result"]["target"].split(",")[1])))
        assert target.mode == "L" and np.asarray(target).mean() == pytest.approx(0.299 * 255, abs=1)
        assert job("/api/edit", {"page": "g", "wr": 0.01, "request": _strokes(32)})["state"] == "done"
        status, saved = call("POST", "/api/save", {"page": "g"})
        assert status == 200, saved
    assert Image.open(tmp_path / "red.png").mode == "L"
    d = read_latent_file(tmp_path / "red.npz")
    assert d["space"] == "w" and d["w"].shape == (1, G.num_ws, 32)
    request, _ = decode_strokes(_strokes(32), 32, channels=1)
    assert request.shape == (1, 32, 32)
    assert float(request[0, 0, 0]) == pytest.approx((0.299 * 120 + 0.587 * 20 + 0.114 * 20) / 127.5 - 1, abs=1e-5)


def test_a_direction_file_is_scaled_by_the_generators_prior_std(tmp_path):
    """Rows of a direction file are one prior std long, measured by G.latent_std_along."""
    G = _tiny_stylegan()
    with torch.no_grad():
        target = G.synthesize(G.sample(1, seed=5, space="w"), "w").clamp(-1, 1)[0]
    editor = Editor(G, tmp_path, steps=5, starts=1, loss="mse")
    try:
        assert _until(editor.queue, editor.submit_projection("p", target, "sg", "w"))["state"] == "done"
        d = torch.zeros(2, 32)
        d[0, 0], d[1, 1] = 3.0, -1.0
        snap = _until(editor.queue, editor.submit_directions("p", d, "axes.npy"))
        unit = d / d.norm(dim=1, keepdim=True)
        assert snap["result"]["std"] == [round(float(s), 4) for s in G.latent_std_along(unit, "w")]
        with editor.queue.lock:
            rows = editor.page("p").directions
        assert torch.allclose(rows.norm(dim=1), G.latent_std_along(unit, "w"), rtol=1e-5)
    finally:
        editor.queue.close()
    assert G.latent_std_along(unit, "z").tolist() == [1.0, 1.0]


# --- limits: every request answered in one line, the server goes on ---------------------------------


def _raw(port: int, head: str, body: bytes = b"") -> tuple[int, dict]:
    """Send a hand-made request (its Host filled in) and read the answer until the server closes."""
    request = head.replace("HOST", f"127.0.0.1:{port}").replace("\n", "\r\n") + "\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(request.encode() + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status, _, answer = data.partition(b"\r\n\r\n")
    return int(status.split()[1]), json.loads(answer)


def test_bodies_without_one_valid_length_are_refused_unread(api, capsys):
    call, _, _ = api
    port = _port(call)
    upload = "POST /api/project?page=p&name=x.png HTTP/1.1\nHost: HOST\nContent-Type: application/octet-stream\n"
    body = b"\0" * 4096  # what follows is never read: the answer comes at once, then the server closes
    for extra in (
        "Content-Length: -1\n",
        "",
        "Transfer-Encoding: chunked\n",
        "Content-Length: +5\n",
        "Content-Length: 5\nContent-Length: 9\n",
        "Content-Length: 0x10\n",
    ):
        status, err = _raw(port, upload + extra, body)
        assert status == 400 and "no valid Content-Length" in err["error"], (extra, err)
    status, err = _raw(port, upload + f"Content-Length: {40 * 2**20}\n", body)
    assert status == 400 and "larger than the 25 MiB limit" in err["error"]
    assert call("GET", "/api/info")[0] == 200
    assert "Traceback" not in capsys.readouterr().err


def _port(call) -> int:
    """The port of the `api` fixture's server (its `call` closes over it)."""
    return dict(zip(call.__code__.co_freevars, (c.cell_contents for c in call.__closure__)))["port"]


def test_hostile_requests_get_one_json_line_and_the_server_goes_on(api, pillow_image, capsys):
    call, job, _ = api
    assert job("/api/project", {"page": "p", "sample": "face_00"})["state"] == "done"

    def npy(shape):  # a .npy header declaring `shape` (about 2^40 floats), and 64 bytes of data
        f = io.BytesIO()
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": shape})
        return f.getvalue() + b"\0" * 64

    cases = [
        ("/api/render", b"[" * 100_000, "application/json; charset=utf-8", "nested too deeply"),
        ("/api/render", {"page": "p", "strengths": [int("9" * 400)]}, "application/json", "not a number"),
        ("/api/edit", {"page": "p", "wr": int("9" * 400), "request": _strokes()}, "application/json", "not a number"),
        ("/api/edit", b'{"page": "p", "wr": 1e999, "request": 1}', "application/json; x", "painted strokes"),
        (
            "/api/directions?page=p&name=d.npy",
            npy((10**10, 100)),
            "application/octet-stream",
            "size does not match its shape",
        ),
        ("/api/directions?page=p&name=d.npy", npy((2**40,)), "application/octet-stream", "latents here need [100]"),
        (
            "/api/project?page=p&name=x.png",
            pillow_image("BLP"),
            "application/octet-stream",
            "x.png: not an image in a format latent-fit reads",
        ),
        (
            "/api/project?page=p&name=x.png",
            pillow_image("EPS"),
            "application/octet-stream",
            "x.png: not an image in a format latent-fit reads",
        ),
    ]
    for path, body, ctype, match in cases:
        status, err = call("POST", path, body, ctype=ctype)
        assert status == 400 and match in err["error"] and "\n" not in err["error"], (path, err)
        assert call("GET", "/api/info")[0] == 200
    assert "Traceback" not in capsys.readouterr().err


def test_a_bug_is_answered_in_one_line_and_logged(api, monkeypatch, capsys):
    call, _, _ = api
    monkeypatch.setattr("latent_fit.serve.server.sample_names", lambda: 1 / 0)
    status, err = call("POST", "/api/project", {"page": "p", "sample": "face_00"})
    assert status == 500 and err["error"] == "internal error: ZeroDivisionError: division by zero"
    assert "Traceback" in capsys.readouterr().err
    assert call("GET", "/api/info")[0] == 500 and call("GET", "/")[0] == 200


def test_save_never_overwrites(api):
    call, job, out = api
    assert job("/api/project", {"page": "p", "sample": "face_00"})["state"] == "done"
    status, first = call("POST", "/api/save", {"page": "p", "stem": "face"})
    assert status == 200 and first["stem"] == "face" and "note" not in first
    kept = (out / "face.npz").read_bytes()
    (out / "face_2.png").write_bytes(b"someone else's")
    status, again = call("POST", "/api/save", {"page": "p", "stem": "face"})
    assert status == 200 and again["stem"] == "face_3" and again["files"] == ["face_3.npz", "face_3.png"]
    assert again["renamed_from"] == "face" and "face.npz or face.png is there already" in again["note"]
    assert (out / "face.npz").read_bytes() == kept and (out / "face_2.png").read_bytes() == b"someone else's"
    assert sorted(p.name for p in out.iterdir()) == ["face.npz", "face.png", "face_2.png", "face_3.npz", "face_3.png"]


def test_the_queue_is_bounded_per_page_and_in_all():
    from latent_fit.serve.jobqueue import MAX_QUEUED, MAX_QUEUED_PER_PAGE, QueueFull

    q = DeviceQueue()
    release = threading.Event()
    try:
        blocker = q.submit("x", "block", lambda job: release.wait(30) and {})
        while q.wait(blocker.id, 0, 5)["state"] != "running":
            pass
        for k in range(MAX_QUEUED_PER_PAGE):
            q.submit("a", f"kind{k}", lambda job: {})
        with pytest.raises(QueueFull, match="this page has 4 jobs waiting"):
            q.submit("a", "another", lambda job: {})
        q.submit("a", "kind0", lambda job: {})  # a newer request of a kind replaces the stale one
        for i in range(MAX_QUEUED - MAX_QUEUED_PER_PAGE):
            q.submit(f"page{i}", "edit", lambda job: {})
        with pytest.raises(QueueFull, match="16 jobs are waiting"):
            q.submit("one more page", "edit", lambda job: {})
    finally:
        release.set()
        q.close()


def test_a_full_queue_is_a_503(api, monkeypatch):
    call, _, _ = api
    monkeypatch.setattr("latent_fit.serve.jobqueue.MAX_QUEUED_PER_PAGE", 0)
    status, err = call("POST", "/api/project", {"page": "p", "sample": "face_00"})
    assert status == 503 and "jobs waiting for the device" in err["error"]


@pytest.mark.parametrize("host", ["127.1", "0x7f.1", "2130706433", "localhost", "::1", "::ffff:127.0.0.1"])
def test_every_loopback_spelling_keeps_the_host_check(G, tmp_path, host):
    editor = Editor(G, tmp_path, steps=5)
    try:
        srv = make_server(editor, host, 0)
    except LatentFitError as e:
        pytest.skip(f"cannot listen on {host} here: {e}")
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    bound, port = srv.server_address[:2]
    try:
        assert srv.loopback

        def get(host_header):
            conn = http.client.HTTPConnection(bound, port, timeout=20)
            conn.request("GET", "/api/info", headers={"Host": host_header})
            return conn.getresponse().status

        assert get("evil.example") == 403 and get(f"evil.example:{port}") == 403  # DNS rebinding
        shown = f"[{host}]" if ":" in host else host
        assert get(f"{shown}:{port}") == 200 and get(f"localhost:{port}") == 200
    finally:
        srv.shutdown()
        editor.queue.close()
        srv.server_close()


def test_loopback_addresses():
    from latent_fit.serve.server import is_loopback

    assert all(map(is_loopback, ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.168.1.2", "::ffff:10.0.0.1", "fe80::1%eth0"]))


def test_the_favicon_is_served(api):
    call, _, _ = api
    status, icon = call("GET", "/favicon.ico")
    assert status == 200 and Image.open(io.BytesIO(icon)).format == "ICO"


def test_a_body_that_stops_coming_is_answered(api, monkeypatch, capsys):
    call, _, _ = api
    from latent_fit.serve.server import Handler

    monkeypatch.setattr(Handler, "timeout", 1)
    head = "POST /api/project?page=p&name=x.png HTTP/1.1\nHost: HOST\nContent-Type: application/octet-stream\n"
    status, err = _raw(_port(call), head + "Content-Length: 1000\n", b"\0" * 10)  # 990 bytes never come
    assert status == 400 and "the request body did not arrive" in err["error"]
    assert "Traceback" not in capsys.readouterr().err


# --- whole photos -------------------------------------------------------------------------------


def two_faces() -> np.ndarray:
    """A 480x260 photo: the Grace Hopper portrait (scaled to 200x234) and its mirror image side by
    side on noise (uint8 HWC); the faces' boxes are about 90 px a side."""
    face = np.asarray(Image.open(SAMPLES / "photos" / "grace_hopper_whole.png").convert("RGB").resize((200, 234)))
    photo = np.random.default_rng(0).integers(0, 256, (260, 480, 3), dtype=np.uint8)
    photo[13:247, 20:220], photo[13:247, 260:460] = face, face[:, ::-1]
    return photo


def _decoded(url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))


def _wait(call, answer: dict) -> dict:
    """The end state of the job a POST answered with."""
    since = -1
    while True:
        _, snap = call("GET", f"/api/job?id={answer['job']}&since={since}")
        if snap["state"] in ("done", "error", "cancelled"):
            return snap
        since = snap["version"]


def test_a_photo_face_picked_edited_pasted_back_and_saved(api):
    """A photo with two faces: both boxed, the largest projected first; the second picked, edited,
    pasted back into the photo (the first face's half untouched) and saved with its photo files,
    the latent file linking the saved original (PhotoLink)."""
    from latent_fit.faces import PhotoLink, photo_back

    call, job, out = api
    photo = two_faces()
    status, up = call("POST", "/api/project?page=ph&name=pair.png", _png(photo), ctype="application/octet-stream")
    assert status == 200 and "note" not in up, up
    boxes = up["photo"]["boxes"]
    assert (up["photo"]["width"], up["photo"]["height"], len(boxes)) == (480, 260, 2)
    assert np.array_equal(_decoded(up["photo"]["url"]), photo)
    assert sorted(b[0] > 240 for b in boxes) == [False, True]  # one face in each half
    first = _wait(call, up)["result"]
    assert first["stem"] == "pair" and _decoded(first["photo"]).shape == photo.shape

    picked = job("/api/project", {"page": "ph", "face": 1})["result"]
    assert picked["stem"] == "pair_face2" and picked["target"] != first["target"]
    edited = job("/api/edit", {"page": "ph", "wr": 0.01, "request": _strokes()})["result"]
    shown = _decoded(edited["photo"])
    untouched = slice(0, 230) if boxes[0][0] < 240 else slice(250, 480)  # face 1's half
    assert shown.shape == photo.shape and not np.array_equal(shown, photo)
    assert np.array_equal(shown[:, untouched], photo[:, untouched])

    status, saved = call("POST", "/api/save", {"page": "ph", "stem": "mine"})
    suffixes = [".npz", ".png", "_photo.png", "_aligned.png", "_original.png"]
    assert status == 200 and saved["files"] == [f"mine{s}" for s in suffixes], saved
    assert sorted(p.name for p in out.iterdir()) == sorted(f"mine{s}" for s in suffixes)
    assert np.array_equal(np.asarray(Image.open(out / "mine_original.png")), photo)
    pasted = np.asarray(Image.open(out / "mine_photo.png"))
    assert np.array_equal(pasted, shown)  # a photo this small is shown at its own size
    assert np.array_equal(np.asarray(Image.open(out / "mine_aligned.png")), _decoded(picked["target"]))
    link = PhotoLink.read(out / "mine.npz", read_latent_file(out / "mine.npz"))
    assert (link.path, link.size, link.face) == (str((out / "mine_original.png").resolve()), (260, 480), 2)
    assert np.array_equal(photo_back([link], load_image(out / "mine.png", 64)[None]), pasted)
    status, again = call("POST", "/api/save", {"page": "ph", "stem": "mine"})
    assert again["stem"] == "mine_2" and "mine_original.png is there already" in again["note"]
    status, err = call("POST", "/api/project", {"page": "ph", "face": 2})
    assert status == 400 and err["error"] == "face 3: the photo has 2 face(s)"


def test_photos_without_faces_and_aligned_crops_are_used_as_they_are(api):
    """A picture with no face is centre-cropped with one line saying so; the generator's own
    64 px crop is used as it is (no photo, no line), as before faces were looked for."""
    call, job, out = api
    gray = np.full((120, 200, 3), 128, np.uint8)
    status, up = call("POST", "/api/project?page=n&name=wall.png", _png(gray), ctype="application/octet-stream")
    assert status == 200 and up["note"] == "no face found in wall.png: centre-cropped, not aligned", up
    assert "photo" not in up and "photo" not in _wait(call, up)["result"]
    crop = SAMPLES / "targets" / "face_01.png"
    status, up = call(
        "POST", "/api/project?page=n&name=face_01.png", crop.read_bytes(), ctype="application/octet-stream"
    )
    assert status == 200 and set(up) == {"job"}, up
    done = _wait(call, up)["result"]
    assert np.array_equal(_decoded(done["target"]), np.asarray(Image.open(crop).convert("RGB")))
    assert "photo" not in done
    status, err = call("POST", "/api/project", {"page": "n", "face": 0})
    assert status == 400 and err["error"] == "no photo on this page: upload a photo first"
    status, saved = call("POST", "/api/save", {"page": "n"})
    assert saved["files"] == ["face_01.npz", "face_01.png"]


def test_a_large_photo_is_shown_scaled_and_its_faces_bounded(G, monkeypatch):
    """A photo larger than the page shows it: boxes in the photo's pixels, the pasted photo at the
    size shown (the photo's own size at Save); faces offered and photo pixels are capped."""
    from latent_fit.faces import face_template
    from latent_fit.serve import photos

    template = face_template(G)[0]
    big = np.asarray(Image.fromarray(two_faces()).resize((1200, 650), Image.LANCZOS))
    target, photo, note = photos.read_upload(_png(big), "big.png", "big", G, template)
    assert note is None and photo.size == (650, 1200) and photo.shown.shape == (277, 512, 3)
    assert target.shape == (3, 64, 64) and torch.equal(target, photo.aligned.crops[0])
    assert len(photo.boxes()) == 2 and max(b[2] for b in photo.boxes()) > 1000  # photo pixels
    shown, full = photo.pasted(1, -target), photo.pasted(1, -target, shown=False)
    assert shown.shape == photo.shown.shape and full.shape == big.shape
    scaled = np.asarray(Image.fromarray(full).resize((512, 277), Image.BOX)).astype(float)
    assert np.abs(scaled - shown).mean() < 2 and np.abs(shown.astype(float) - photo.shown).mean() > 2
    assert photos.read_upload(_png(big), "big.png", "big", G, None)[1] is None  # no template: as before
    monkeypatch.setattr(photos, "MAX_FACES", 1)
    monkeypatch.setattr(photos, "MAX_PHOTO_PIXELS", 600 * 325)
    _, photo, _ = photos.read_upload(_png(big), "big.png", "big", G, template)
    assert len(photo.boxes()) == 1 and photo.size == (325, 600)
    assert photo.aligned.crops.shape[0] == photo.aligned.transforms.shape[0] == 1
