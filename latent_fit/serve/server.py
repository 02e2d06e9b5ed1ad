"""The HTTP side of `latent-fit serve`: the standard library's ThreadingHTTPServer, the static
page, and a small JSON API whose device work goes through the Editor's queue.

API (every POST answers JSON; errors are {"error": one line}):
  GET  /api/info                           the generator, its spaces, the samples, settings
  GET  /api/job?id=J&since=V               the job's state once its version passes V (long poll)
  POST /api/project?page=&space=&class=&name=   body: the image file (application/octet-stream)
      answers also {photo: {url, width, height, boxes}} when faces were found and aligned (face 0,
      the largest, is projected), and {note} when none was found (the image is centre-cropped)
  POST /api/project   JSON {page, space, class, sample}  a bundled sample instead (class: conditional only)
  POST /api/project   JSON {page, space, class, face}    face K (0: the largest) of the page's photo
  POST /api/edit      JSON {page, wr, request}         request: the painted layer as a PNG data URL
  POST /api/render    JSON {page, strengths}
  POST /api/directions JSON {page} (principal directions) or ?page=&name= with a .npy body
  POST /api/sweep     JSON {page, request?}
  POST /api/save      JSON {page, stem?}
Device work answers {"job": id}; the page polls /api/job for progress and the result (for a face
of a photo the results of project, edit, render and directions carry `photo` too: the photo with
the page's image pasted back, at the size the page shows it).
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import sys
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from ..errors import LatentFitError, one_line
from ..images import IMAGE_SUFFIXES, load_image
from ..photos import face_stem
from .editor import Editor, data_url
from .inputs import MAX_UPLOAD_BYTES, decode_direction, decode_strokes
from .jobqueue import QueueFull

STATIC = Path(__file__).resolve().parent / "static"
STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
    "/favicon.ico": ("favicon.ico", "image/x-icon"),
}
BODY_TYPES = ("application/json", "application/octet-stream")
MAX_JSON_BYTES = MAX_UPLOAD_BYTES * 4 // 3 + 4096  # a painted canvas comes as base64
CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def samples_dir() -> Path | None:
    """samples/targets inside the installed package, else beside it in a source checkout (the
    lookup the bundled weights use)."""
    here = Path(__file__).resolve().parents[1]
    for d in (here / "samples" / "targets", here.parent / "samples" / "targets"):
        if d.is_dir():
            return d
    return None


def sample_names() -> dict[str, Path]:
    d = samples_dir()
    if d is None:
        return {}
    return {p.stem: p for p in sorted(d.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()}


def is_loopback(address: str) -> bool:
    """Whether a bound socket's numeric address is loopback (127.0.0.0/8, ::1, ::ffff:127.x.y.z).
    Asking the socket, not the --host spelling, covers 127.1, 0x7f.1, localhost and the rest."""
    ip = ipaddress.ip_address(address.split("%")[0])
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or bool(mapped and mapped.is_loopback)


class Handler(BaseHTTPRequestHandler):
    """One request; `editor` and `hosts` (the Host headers accepted, None: any) are set on the
    subclass that make_server builds."""

    editor: Editor
    hosts: set[str] | None
    server_version = "latent-fit"
    protocol_version = "HTTP/1.1"
    timeout = 60  # seconds a connection may stall (a body sent slowly, an idle keep-alive)

    def log_message(self, fmt, *args):  # quiet: the page shows what happens
        pass

    # --- responses ---------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", CSP)
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the page went away: nothing to tell it
            self.close_connection = True

    def _json(self, obj: dict, status: int = 200) -> None:
        self._send(status, json.dumps(obj, allow_nan=False).encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
        if self.command == "POST":  # its body may be unread: it must not be taken for a request
            self.close_connection = True
        self._json({"error": message}, status)

    # --- checks ------------------------------------------------------------------------------

    def _trusted(self) -> bool:
        """Refuse requests for another host name (DNS rebinding) and cross-site POSTs."""
        host = self.headers.get("Host", "")
        if self.hosts is not None and host not in self.hosts:
            self._error(HTTPStatus.FORBIDDEN, f"host {host!r} is not served here")
            return False
        origin = self.headers.get("Origin")
        if self.command == "POST" and origin not in (None, f"http://{host}"):
            self._error(HTTPStatus.FORBIDDEN, f"requests from {origin!r} are refused")
            return False
        return True

    def _body(self, ctype: str, limit: int) -> bytes:
        """The request body, of at most `limit` bytes: refused unread without one valid
        Content-Length (a chunked body, -1, two lengths), and never read past that length."""
        if self.headers.get("Content-Type", "").split(";")[0].strip() != ctype:
            raise LatentFitError(f"expected a {ctype} request body")
        lengths = self.headers.get_all("Content-Length") or []
        if "Transfer-Encoding" in self.headers or len(lengths) != 1 or not re.fullmatch(r"\d{1,18}", lengths[0]):
            raise LatentFitError("the request has no valid Content-Length; send the body with its length")
        n = int(lengths[0])
        if n > limit:
            raise LatentFitError(
                f"upload of {n / 2**20:.1f} MiB is larger than the "
                f"{MAX_UPLOAD_BYTES // 2**20} MiB limit; use a smaller file"
            )
        try:
            data = self.rfile.read(n)
        except OSError as e:  # the client stalled past `timeout`, or went away
            raise LatentFitError(f"the request body did not arrive ({e})") from None
        if len(data) != n:
            raise LatentFitError(f"the request body ended after {len(data)} of {n} bytes")
        return data

    def _args(self) -> dict:
        """The JSON object of the body, or the query string for binary uploads."""
        if self.headers.get("Content-Type", "").startswith("application/json"):
            try:
                obj = json.loads(self._body("application/json", MAX_JSON_BYTES) or b"{}")
            except RecursionError:
                raise LatentFitError("the request body is nested too deeply") from None
            except ValueError:
                raise LatentFitError("the request body is not valid JSON") from None
            if not isinstance(obj, dict):
                raise LatentFitError("the request body must be a JSON object")
            return obj
        return {k: v[-1] for k, v in parse_qs(urlsplit(self.path).query).items()}

    # --- routes ------------------------------------------------------------------------------

    def do_GET(self):
        self._answer(self._get)

    def do_POST(self):
        self._answer(self._post)

    def _answer(self, handle) -> None:
        """Run `handle` so that every request is answered in one JSON line: a user's mistake 400,
        a full queue 503, a bug 500 (its traceback logged)."""
        try:
            handle()
        except QueueFull as e:
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, str(e))
        except LatentFitError as e:
            self._error(HTTPStatus.BAD_REQUEST, str(e))
        except Exception as e:
            traceback.print_exc(file=sys.stderr)
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, one_line(f"internal error: {type(e).__name__}: {e}"))

    def _get(self) -> None:
        if not self._trusted():
            return
        url = urlsplit(self.path)
        if url.path in STATIC_FILES:
            name, ctype = STATIC_FILES[url.path]
            return self._send(200, (STATIC / name).read_bytes(), ctype)
        if url.path == "/api/info":
            return self._json(self.editor.info() | {"samples": list(sample_names())})
        if url.path == "/api/job":
            q = parse_qs(url.query)
            try:
                since = int(q.get("since", ["-1"])[0])
            except ValueError:
                since = -1
            snap = self.editor.queue.wait(q.get("id", [""])[0], since)
            return self._json(snap) if snap else self._error(404, "no such job (the server may have restarted)")
        self._error(404, f"{url.path}: not found")

    def _post(self) -> None:
        if not self._trusted():
            return
        route = getattr(self, "_post_" + urlsplit(self.path).path.removeprefix("/api/"), None)
        if route is None or not urlsplit(self.path).path.startswith("/api/"):
            return self._error(404, f"{urlsplit(self.path).path}: not found")
        if self.headers.get("Content-Type", "").split(";")[0].strip() not in BODY_TYPES:
            raise LatentFitError(f"send {' or '.join(BODY_TYPES)}")  # a plain web form cannot
        self._json(route())

    def _page_id(self, args: dict) -> str:
        page = str(args.get("page", ""))
        if not 1 <= len(page) <= 64:
            raise LatentFitError("the request names no page")
        return page

    def _post_project(self) -> dict:
        args = self._args()
        page, G, photo, face, answer = self._page_id(args), self.editor.G, None, 0, {}
        if "sample" in args:
            path = sample_names().get(str(args["sample"]))
            if path is None:
                raise LatentFitError(f"sample {args['sample']!r}: not one of the bundled samples")
            target, stem = load_image(path, G.resolution, channels=G.img_channels, name=path.name), path.stem
        elif "face" in args:
            photo, face = self.editor.photo(page), _whole(args["face"], "face")
            target, stem = photo.target(face, G.img_channels), face_stem(photo.stem, face)
        else:
            name = str(args.get("name", "upload"))[:200]
            data = self._body("application/octet-stream", MAX_UPLOAD_BYTES)
            target, stem, photo, note = self.editor.read_upload(data, name)
            answer = ({"note": note} if note else {}) | ({"photo": self._photo(photo)} if photo else {})
        job = self.editor.submit_projection(
            page, target, stem, args.get("space") or None, _class(args.get("class")), photo, face
        )
        return {"job": job.id} | answer

    def _photo(self, photo) -> dict:
        """What the page shows of an uploaded photo: its copy and the faces' boxes (photo pixels)."""
        h, w = photo.size
        return {"url": data_url(photo.shown), "width": w, "height": h, "boxes": photo.boxes()}

    def _post_edit(self) -> dict:
        args = self._args()
        G = self.editor.G
        request, mask = decode_strokes(args.get("request", ""), G.resolution, G.img_channels)
        return {"job": self.editor.submit_edit(self._page_id(args), request, mask, _number(args.get("wr"))).id}

    def _post_render(self) -> dict:
        args = self._args()
        strengths = args.get("strengths")
        if not isinstance(strengths, list):
            raise LatentFitError("strengths: a list of numbers expected")
        return {"job": self.editor.submit_render(self._page_id(args), [_number(s) for s in strengths]).id}

    def _post_directions(self) -> dict:
        args = self._args()
        page, loaded = self._page_id(args), None
        if not self.headers.get("Content-Type", "").startswith("application/json"):
            with self.editor.queue.lock:
                shape = self.editor.G.latent_shape(self.editor.page(page).space)
            loaded = decode_direction(self._body("application/octet-stream", MAX_UPLOAD_BYTES), shape)
        return {"job": self.editor.submit_directions(page, loaded, str(args.get("name", ""))).id}

    def _post_sweep(self) -> dict:
        args = self._args()
        G = self.editor.G
        request = decode_strokes(args["request"], G.resolution, G.img_channels) if args.get("request") else None
        return {"job": self.editor.submit_sweep(self._page_id(args), request).id}

    def _post_save(self) -> dict:
        args = self._args()
        try:
            return self.editor.save(self._page_id(args), args.get("stem") or None)
        except OSError as e:
            raise LatentFitError(f"{self.editor.out}: could not save ({e.strerror or e})") from None


def _class(value) -> int | None:
    """A class index sent by the page (None: none sent)."""
    return None if value is None or value == "" else _whole(value, "class")


def _whole(value, what: str) -> int:
    """A small whole number sent by the page."""
    if isinstance(value, bool) or not str(value).isascii() or not str(value).isdigit() or len(str(value)) > 6:
        raise LatentFitError(f"{what} {str(value)[:20]!r}: give a whole number")
    return int(value)


def _number(value) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer of 400 digits
        raise LatentFitError(f"{one_line(repr(value), 60)}: not a number that fits a float") from None
    if x != x or x in (float("inf"), float("-inf")):
        raise LatentFitError(f"{one_line(repr(value), 60)}: not a finite number")
    return x


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    url: str
    loopback: bool  # bound to a loopback address: the Host check is on


class _Server6(_Server):
    address_family = socket.AF_INET6


def make_server(editor: Editor, host: str = "127.0.0.1", port: int = 8000) -> _Server:
    """A server (not yet serving) for `editor` on host:port (port 0: a free one); its `url`
    says where. Bound to a loopback address it answers only requests for its own host names."""
    cls = _Server6 if ":" in host else _Server
    try:
        server = cls((host, port), type("BoundHandler", (Handler,), {"editor": editor, "hosts": None}))
    except OSError as e:
        raise LatentFitError(
            f"--host {host} --port {port}: cannot listen there ({e.strerror or e}); "
            "pick another --port (0: any free one)"
        ) from None
    bound, port = server.server_address[:2]
    shown = f"[{host}]" if ":" in host else host
    server.loopback = is_loopback(bound)
    if server.loopback:
        names = (shown, f"[{bound}]" if ":" in bound else bound, "localhost", "127.0.0.1", "[::1]")
        server.RequestHandlerClass.hosts = {f"{h}:{port}" for h in names}
    server.url = f"http://{shown}:{port}/"
    return server


def serve(editor: Editor, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the page until interrupted; prints its URL, and warns when not bound to loopback."""
    server = make_server(editor, host, port)
    if not server.loopback:
        print(
            f"warning: listening on {host}, not on loopback: anyone who can reach this machine can "
            f"use the editor and write into {editor.out}",
            file=sys.stderr,
            flush=True,
        )
    print(
        f"latent-fit serve: {server.url}  (generator {editor.G.name}, saving into {editor.out}; Ctrl+C to stop)",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        editor.queue.close()
        server.server_close()
