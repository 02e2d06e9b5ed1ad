"""The web editor with a conditional generator: the class picker (in a real browser), and every
rendering of the page in the class its projection was made in."""

import textwrap
import threading

import numpy as np
import pytest
import torch
from test_modules import MODULES
from test_serve import _until
from test_serve_browser import CHROMIUM_ARGS, PNG, TIMEOUT, _by, _chromium, expect, sync_playwright

from latent_fit import read_latent_file
from latent_fit.errors import LatentFitError
from latent_fit.generators import load_generator
from latent_fit.serve import Editor, make_server


@pytest.fixture
def cond(tmp_path):
    path = tmp_path / "lf_cond_page.py"
    path.write_text(textwrap.dedent(MODULES))
    return load_generator(f"{path}:cond")


def test_the_editor_works_in_the_page_class(cond, tmp_path):
    from latent_fit.edit import render

    ed = Editor(cond, tmp_path, steps=5, starts=1, loss="mse", pca_samples=50)
    assert ed.info()["classes"] == 4
    target = torch.zeros(3, 16, 16)
    with pytest.raises(LatentFitError, match="conditional: pick a class 0..3"):
        ed.submit_projection("p", target, "t", None)
    with pytest.raises(LatentFitError, match="choose 0..3"):
        ed.submit_projection("p", target, "t", None, 7)
    snap = _until(ed.queue, ed.submit_projection("p", target, "t", None, 2))
    assert snap["state"] == "done" and snap["result"]["class"] == 2
    page = ed.page("p")
    shown = render(cond, page.projection[None], "z", cond.class_vector(2, "z")[None])
    assert torch.equal(page.image, shown[0])
    assert _until(ed.queue, ed.submit_directions("p"))["state"] == "done"
    ed.save("p", "saved")
    assert int(read_latent_file(tmp_path / "saved.npz")["class_index"]) == 2
    ed.queue.close()


def test_the_page_shows_a_class_picker_for_a_conditional_generator(cond, tmp_path):
    exe = _chromium()
    if exe is None:
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    editor = Editor(cond, tmp_path / "out", steps=20, starts=1, loss="mse", pca_samples=50)
    (tmp_path / "out").mkdir()
    srv = make_server(editor, "127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.set_default_timeout(TIMEOUT)
            page.goto(srv.url)
            page.wait_for_selector("body[data-ready='1']")
            expect(_by(page, "class")).to_be_visible()
            assert page.locator("[data-testid=class] option").all_inner_texts() == ["0", "1", "2", "3"]
            _by(page, "class").select_option("3")
            _by(page, "sample").select_option("face_00")
            expect(_by(page, "projection")).to_have_attribute("src", PNG)
            expect(page.locator("#projection-info")).to_contain_text("class 3")
            first = _by(page, "projection").get_attribute("src")
            _by(page, "class").select_option("1")  # another class projects again
            expect(page.locator("#projection-info")).to_contain_text("class 1")
            assert _by(page, "projection").get_attribute("src") != first
            _by(page, "save").click()
            expect(_by(page, "saved")).to_contain_text("saved face_00.npz")
            browser.close()
    finally:
        srv.shutdown()
        editor.queue.close()
        srv.server_close()
    d = read_latent_file(tmp_path / "out" / "face_00.npz")
    assert int(d["class_index"]) == 1 and np.asarray(d["latent"]).shape == (8,)


def test_an_unconditional_page_has_no_class_picker(G, tmp_path):
    assert Editor(G, tmp_path).info()["classes"] == 0
