"""OUT/index.html after project, edit and sweep: a page that opens from disk, shows every
target's images (relative links that exist) and a metrics table with one row per target."""

import json
import re
import shutil
from pathlib import Path

import pytest

from latent_fit.report import render_report, write_report

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
FAST = ["--steps", "10", "--loss", "mse"]


def _links(page: str) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', page)


def _rows(page: str) -> int:
    return page.count("<tr>") - page.count("<thead><tr>")


@pytest.fixture
def projected(cli, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for name in ("face_00.png", "face_01.png"):
        shutil.copy(SAMPLES / "targets" / name, d)
    out = tmp_path / "proj"
    assert cli("project", d, "-o", out, *FAST, "--starts", "2").exit_code == 0
    return out


def test_project_report(projected):
    page = (projected / "index.html").read_text()
    links = _links(page)
    for stem in ("face_00", "face_01"):
        assert f"{stem}_compare.png" in links
    assert all((projected / name).is_file() for name in links)
    assert _rows(page) == 2 and '<table class="sortable">' in page
    assert "<th>psnr</th>" in page and "addEventListener" in page  # sorts in the page itself
    assert "http" not in page.replace("http-equiv", "")  # nothing fetched from elsewhere


def test_edit_and_sweep_reports(cli, projected, tmp_path):
    out = tmp_path / "edit"
    r = cli(
        "edit",
        projected / "face_00.npz",
        projected / "face_01.npz",
        "--target",
        SAMPLES / "targets" / "face_02.png",
        "-o",
        out,
        *FAST,
    )
    assert r.exit_code == 0, r.stderr
    page = (out / "index.html").read_text()
    assert _rows(page) == 2 and "before | request | after" in page
    assert all((out / name).is_file() for name in _links(page))

    out = tmp_path / "sweep"
    r = cli("sweep", SAMPLES / "targets" / "face_00.png", "--wr", "0,1e-2,1", "-o", out, *FAST, "--starts", "1")
    assert r.exit_code == 0, r.stderr
    page = (out / "index.html").read_text()
    assert {"sweep.png", "grid.png"} <= set(_links(page))
    assert _rows(page) == 3 and "suggested" in page


def test_report_escapes_names_and_survives_an_empty_folder(tmp_path):
    (tmp_path / "metrics.json").write_text('[{"target": "<b>x</b>", "psnr": 30.5}]')
    page = write_report(tmp_path, "project").read_text()
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "latent-fit sweep" in write_report(empty, "sweep").read_text()
    with pytest.raises(ValueError):
        write_report(empty, "nope")


def test_photo_rows_that_are_not_numbers_do_not_break_the_report(tmp_path):
    rows = [
        {"target": "a", "photo": "/x.png", "photo_face": "abc"},
        {"target": "b", "photo": "/x.png", "photo_face": [1]},
    ]
    (tmp_path / "metrics.json").write_text(json.dumps(rows))
    assert "<h2>Photos</h2>" in render_report(tmp_path, "project")
