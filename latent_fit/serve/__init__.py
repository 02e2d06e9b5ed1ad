"""`latent-fit serve`: a local web editor. Upload or pick an image (a whole photo: pick one of its
faces), watch it project, paint an edit and choose w_r, move along directions, sweep w_r, save
latents in the CLI's formats (and the edited photo).

Files: editor.py (page state and device work), jobqueue.py (one device queue, stale runs
cancelled), inputs.py (checks on what the browser sends), photos.py (uploaded photos: faces
aligned, results pasted back), server.py (HTTP), static/ (the page).
"""

from __future__ import annotations

from pathlib import Path

from .editor import Editor, load_start_encoder
from .server import make_server, serve


def run_server(
    G,
    out: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    encoder: str = "none",
    steps: int = 200,
    starts: int = 4,
    loss: str = "mse",
    seed: int = 0,
    wr_units: str = "raw",
) -> None:
    """Check OUT and the encoder, then serve the editor for G until interrupted."""
    from ..outputs import OutputFolder

    out = Path(out)
    OutputFolder(out).check_writable()
    editor = Editor(G, out, encoder=encoder, steps=steps, starts=starts, loss=loss, seed=seed, wr_units=wr_units)
    editor.start_encoder(G.default_space)  # a bad --encoder fails now, not in the page
    note = editor.face_template()[1]  # found now, not at the first upload
    if note:
        print(note, flush=True)
    serve(editor, host, port)


__all__ = ["Editor", "load_start_encoder", "make_server", "serve", "run_server"]
