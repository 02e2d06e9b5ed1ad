"""Any image a user has becomes a [3, R, R] tensor in [-1, 1] with the right content."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from latent_fit import LatentFitError
from latent_fit.images import FORMAT_NAMES, FORMATS, find_images, load_image

RED = (200, 30, 40)


def rgb_tensor(color):
    return torch.tensor(color, dtype=torch.float32).view(3, 1, 1) / 127.5 - 1


def save(tmp_path, name, img, **kw):
    p = tmp_path / name
    img.save(p, **kw)
    return p


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda: Image.new("RGB", (40, 40), RED), RED),
        (lambda: Image.new("RGBA", (40, 40), RED + (255,)), RED),
        (lambda: Image.new("RGBA", (40, 40), RED + (0,)), (255, 255, 255)),  # transparent -> background
        (lambda: Image.new("L", (40, 40), 100), (100, 100, 100)),
        (lambda: Image.new("LA", (40, 40), (100, 255)), (100, 100, 100)),
        (lambda: Image.new("RGB", (40, 40), RED).convert("P", palette=Image.ADAPTIVE), RED),
        (lambda: Image.new("I;16", (40, 40), 100 * 257), (100, 100, 100)),  # 16-bit grayscale
        (lambda: Image.new("RGB", (1000, 30), RED), RED),  # wide, resized up/down
        (lambda: Image.new("RGB", (3, 5), RED), RED),  # tiny
    ],
)
def test_modes_and_sizes(tmp_path, make, expected):
    path = save(tmp_path, "x.png", make())
    x = load_image(path, 16)
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    assert torch.allclose(x, rgb_tensor(expected).expand(3, 16, 16), atol=2 / 127.5)


def test_16bit_png_keeps_its_range(tmp_path):
    a = np.full((8, 8), 65535, np.uint16)
    a[:, :4] = 0
    path = tmp_path / "deep.png"
    Image.fromarray(a).save(path)
    x = load_image(path, 8)
    assert x[:, :, 0].max() == -1 and x[:, :, -1].min() == 1


def test_non_square_is_center_cropped(tmp_path):
    img = Image.new("RGB", (30, 10), (0, 0, 255))
    img.paste((255, 0, 0), (10, 0, 20, 10))  # red middle third
    x = load_image(save(tmp_path, "wide.png", img), 10)
    assert torch.allclose(x, rgb_tensor((255, 0, 0)).expand(3, 10, 10), atol=1e-6)


def test_exif_rotation_is_applied(tmp_path):
    img = Image.new("RGB", (20, 10), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 10, 10))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    path = save(tmp_path, "rot.jpg", img, exif=exif.tobytes(), quality=95)
    x = load_image(path, 10)
    # viewed upright the red half is on top
    assert x[0, :3].mean() > 0.8 and x[0, -3:].mean() < -0.5


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("missing.png", None, "file not found"),
        ("notes.png", b"this is text", "not an image in a format latent-fit reads"),
        ("cut.png", "truncated", "unreadable image"),
    ],
)
def test_bad_images_name_the_file_and_reason(tmp_path, name, content, reason):
    path = tmp_path / name
    if content == "truncated":
        buf = io.BytesIO()
        Image.effect_noise((64, 64), 50).convert("RGB").save(buf, "PNG")
        path.write_bytes(buf.getvalue()[:300])
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(LatentFitError, match=f"{name}: {reason}"):
        load_image(path, 16)


def test_find_images_expands_folders_and_globs(tmp_path):
    for n in ("b.png", "a.jpg", "c.txt"):
        (tmp_path / n).write_bytes(b"")
    (tmp_path / "empty").mkdir()
    paths, errors = find_images(
        [str(tmp_path), str(tmp_path / "*.png"), str(tmp_path / "empty"), str(tmp_path / "nope.png")]
    )
    assert [p.name for p in paths] == ["a.jpg", "b.png"]
    assert errors == [
        f"{tmp_path / 'empty'}: folder has no images (.avif, .bmp, .gif, .jpeg, .jpg, .pbm, "
        ".pgm, .png, .pnm, .ppm, .tif, .tiff, .webp)",
        f"{tmp_path / 'nope.png'}: file not found",
    ]


# --- formats: an allowlist, and nothing that starts a program ------------------------------------

Image.init()
READ = set(FORMATS) | {"MPO"}  # Pillow opens a JPEG with several pictures as MPO
SUFFIX = {fmt: ext for ext, fmt in reversed(Image.registered_extensions().items())}  # the first of each


@pytest.mark.parametrize("fmt", sorted(Image.SAVE))
def test_every_format_pillow_writes_is_read_or_refused_in_one_line(tmp_path, pillow_image, no_programs, fmt):
    """Each file under its own suffix and named .png: the allowlisted formats load, every other
    one (EPS, BLP, DDS, SPIDER, ...) is refused unidentified, and no program is ever started."""
    data = pillow_image(fmt)
    if data is None:
        pytest.skip(f"this Pillow cannot write {fmt}")
    for name in (f"x{SUFFIX.get(fmt, '.bin')}", "named.png"):
        path = tmp_path / name
        path.write_bytes(data)
        if fmt in READ:
            assert load_image(path, 16).shape == (3, 16, 16)
            assert load_image(data, 16, channels=1, name=name).shape == (1, 16, 16)
            continue
        for source in (path, data):
            with pytest.raises(LatentFitError) as e:
                load_image(source, 16, name=name)
            assert str(e.value).endswith(f"{name}: not an image in a format latent-fit reads ({FORMAT_NAMES})")
    assert no_programs == []


def test_eps_named_png_starts_no_ghostscript(tmp_path, pillow_image, no_programs):
    path = tmp_path / "poster.png"
    path.write_bytes(pillow_image("EPS"))
    with pytest.raises(LatentFitError, match=r"poster.png: not an image in a format latent-fit reads") as e:
        load_image(path, 16)
    assert "\n" not in str(e.value) and no_programs == []


def test_bytes_and_files_decode_alike(tmp_path):
    """The server's uploads (bytes) and the CLI's files go through the same code."""
    img = Image.new("RGBA", (30, 20), RED + (128,))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = save(tmp_path, "x.png", img, exif=exif.tobytes())
    for channels in (1, 3):
        from_file = load_image(path, 8, (0, 0, 0), channels)
        assert torch.equal(load_image(path.read_bytes(), 8, (0, 0, 0), channels, name="x.png"), from_file)
    with pytest.raises(LatentFitError, match="^upload.png: empty file$"):
        load_image(b"", 8, name="upload.png")
    with pytest.raises(LatentFitError, match="^image bytes: not an image in a format"):
        load_image(b"x" * 10_000, 8)


def test_no_plugin_outside_the_allowlist_is_ever_asked(tmp_path, pillow_image, monkeypatch):
    """Formats Pillow opens but cannot write (PSD, FITS, XPM, ...) are not fuzzed from seeds:
    instead every plugin outside the allowlist is replaced by a spy, and files of every kind,
    their magic bytes included, never reach one."""
    asked = []
    for fmt in list(Image.OPEN):
        if fmt not in READ:
            monkeypatch.setitem(Image.OPEN, fmt, (lambda *a, f=fmt: asked.append(f), lambda p, f=fmt: asked.append(f)))
    files = [pillow_image(fmt) for fmt in sorted(Image.SAVE)]
    files += [
        b"8BPS\0\1" + bytes(64),
        b"SIMPLE  =                    T" + bytes(2880),
        b"/* XPM */\n" + bytes(64),
        b"\x59\xa6\x6a\x95" + bytes(64),
        b"%!PS-Adobe-3.0 EPSF-3.0\n" + bytes(64),
        b"\0\0\1\0" + bytes(64),
    ]
    for data in filter(None, files):
        try:
            load_image(data, 8, name="x.png")
        except LatentFitError:
            pass
    assert asked == []
