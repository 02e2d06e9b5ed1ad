"""Generators from the user's own code: `module:callable` found in the current folder, and
`path/to/file.py:callable`, in-process and through a console script run from the user's folder."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image

import latent_fit
from latent_fit.errors import LatentFitError
from latent_fit.generators import load_generator

ROOT = Path(latent_fit.__file__).resolve().parents[1]  # the checkout (or site-packages) under test
MODULE = "lf_user_gen_5d21"  # a name found nowhere but the user's folder
GENERATOR = """
    import torch
    from torch import nn
    from {helper} import SIZE


    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 3 * SIZE * SIZE)

        def forward(self, z):
            return torch.tanh(self.fc(z)).view(-1, 3, SIZE, SIZE)


    def make():
        torch.manual_seed(0)
        return Tiny()
"""


def user_folder(folder: Path, helper="lf_user_helper_5d21") -> Path:
    """A folder with the generator module and a helper module it imports from beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{MODULE}.py").write_text(textwrap.dedent(GENERATOR.format(helper=helper)))
    (folder / f"{helper}.py").write_text("SIZE = 8\n")
    Image.new("RGB", (8, 8), (200, 40, 90)).save(folder / "x.png")
    return folder


@pytest.fixture(autouse=True)
def forget_user_modules():
    """Each test imports the user's modules afresh."""
    yield
    for name in [n for n in sys.modules if "_5d21" in n]:
        del sys.modules[name]


def check(G):
    assert (G.name, G.z_dim, G.resolution) == ("make", 6, 8)
    with torch.no_grad():
        assert G.synthesize(torch.zeros(2, 6)).shape == (2, 3, 8, 8)


def test_a_file_path_and_a_module_in_the_current_folder(tmp_path, monkeypatch):
    folder = user_folder(tmp_path / "gens")
    path_before = list(sys.path)
    check(load_generator(f"{folder / MODULE}.py:make"))  # its helper is found beside it
    monkeypatch.chdir(folder)
    check(load_generator(f"./{MODULE}.py:make"))
    check(load_generator(f"{MODULE}:make"))
    assert sys.path == path_before  # nothing of the user's stays on the path


def test_errors_name_the_spec(tmp_path, monkeypatch):
    user_folder(tmp_path)
    monkeypatch.chdir(tmp_path)
    for spec, reason in [
        ("./nowhere.py:make", "no file ./nowhere.py"),
        ("nowhere_5d21:make", "No module named"),
        (f"./{MODULE}.py:absent", "has no attribute 'absent'"),
    ]:
        with pytest.raises(LatentFitError, match=rf"^{spec}: cannot import the generator factory \(.*{reason}"):
            load_generator(spec)


def console_script(folder: Path) -> Path:
    """A script doing what the installed `latent-fit` console script does (import
    latent_fit.cli, call main), but with this checkout's code. Run as a script from its own folder,
    its sys.path holds that folder, not the current one; it checks so before starting."""
    folder.mkdir()
    script = folder / "latent-fit"
    script.write_text(
        textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(ROOT)!r})
        assert os.getcwd() not in sys.path and "" not in sys.path, sys.path
        from latent_fit.cli import main
        sys.exit(main())
    """)
    )
    return script


@pytest.mark.parametrize("spec", [f"{MODULE}:make", f"./{MODULE}.py:make"])
def test_console_script_finds_user_code_in_the_current_folder(tmp_path, spec):
    folder = user_folder(tmp_path / "user")
    script = console_script(tmp_path / "bin")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    args = [
        sys.executable,
        str(script),
        "project",
        "x.png",
        "-g",
        spec,
        "-o",
        "out",
        "--steps",
        "3",
        "--loss",
        "mse",
        "--device",
        "cpu",
    ]
    r = subprocess.run(args, cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (folder / "out" / "x.npz").is_file() and (folder / "out" / "x.png").is_file()
    if spec.startswith(MODULE):  # and from another folder, the same command does not find it
        r = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode != 0 and f"No module named '{MODULE}'" in r.stderr
