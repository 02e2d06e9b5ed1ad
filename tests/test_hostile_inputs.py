"""Hostile per-file inputs of the commands (latent .npz, direction .npy, tuned and encoder
.safetensors, FIFOs) and a hostile output folder: every case, built here, runs `latent-fit` in a
child forked from test_hostile's warm loader (a memory cap, a timeout) and ends in one clean error
line naming the file, while a good file of the same run is still processed. Two checks of plain
functions (a stored class, training checkpoints) run in this process."""

import hashlib
import json
import os
import re
import shutil
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from safetensors import safe_open
from safetensors.torch import save_file
from test_hostile import FAST, assert_clean_error, loader  # noqa: F401  (loader: the fixture)
from test_odd_inputs import png_bomb

from latent_fit.encoder import FORMAT as ENCODER_FORMAT
from latent_fit.encoder import Encoder
from latent_fit.generators.tuned import FORMAT as TUNED_FORMAT
from latent_fit.outputs import read_targets
from latent_fit.runs.encoder import read_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
BUNDLED_ENCODER = ROOT / "weights" / "digiface-dcgan64-encoder.safetensors"
GOOD = ["face_01", "face_02"]  # good latent files of every batch
STEPS = ["--steps", "3", "--loss", "mse"]
CLI_TIMEOUT = 120  # seconds per command; each takes a few
DEEP = "[" * 100_000 + "]" * 100_000  # beyond the JSON parser's recursion limit
NESTED = '{"a":' * 200 + "1" + "}" * 200  # parses, then refused for its depth
HUGE = '"' + "x" * 2**21 + '"'  # 2 MiB of JSON text

LATENT_CASES = {  # file stem: (entries changed, reason in its error line)
    "class_text": (dict(class_index=np.array("3")), "entry 'class_index' is not one whole number"),
    "class_array": (dict(class_index=np.array([1, 2])), "entry 'class_index' is not one whole number"),
    "class_negative": (dict(class_index=np.array(-1)), "entry 'class_index' is not one whole number"),
    "tuned_array": (dict(tuned_sha256=np.arange(64)), "entry 'tuned_sha256' is not one text"),
    "tuned_words": (dict(tuned_sha256=np.array("not hex " * 8)), r"entry 'tuned_sha256' is not a sha256"),
    "config_deep": (dict(config=np.array(DEEP)), "entry 'config': JSON nested more than 16 levels"),
    "record_nested": (dict(record=np.array(NESTED)), "entry 'record': JSON nested more than 16 levels"),
    "metrics_huge": (dict(metrics=np.array(HUGE)), "entry 'metrics': 2,097,154 characters of JSON"),
    "metrics_list": (dict(metrics=np.array("[1, 2]")), "entry 'metrics': JSON list, not dict"),
    "latent_nan": (dict(latent=np.full(100, np.nan, np.float32)), "entry 'latent' holds values that are not finite"),
    "latent_text": (dict(latent=np.array(["1"] * 100)), r"entry 'latent' is not numbers \(dtype <U1\)"),
    "latent_struct": (dict(latent=np.zeros(100, [("a", "<f4")])), r"entry 'latent' is not numbers \(dtype \|V4\)"),
    "space_array": (dict(space=np.array(["z", "z"])), "entry 'space' is not one text"),
    "generator_number": (dict(generator=np.array(7)), "entry 'generator' is not one text"),
}


def run(loader, *args, status=1):
    """`latent-fit ARGS` in a forked child: its result, once it ended by itself with `status`
    and printed no traceback."""
    res = loader("cli", "-", timeout=CLI_TIMEOUT, args=[os.fsdecode(a) for a in args])
    assert res["outcome"] == "ok" and res["value"] == status, res
    assert "Traceback" not in res["output"], res["output"]
    return res


def assert_lines(res, expected: dict[str, str]):
    """One error line per entry of `expected` (file name -> reason), naming the file; no others."""
    lines = [line for line in res["output"].splitlines() if line.startswith("error: ")]
    assert len(lines) == len(expected), lines
    for name, reason in expected.items():
        assert any(f"{name}: " in line and re.search(reason, line) for line in lines), (name, reason, lines)
    assert all(len(line) < 310 for line in lines)


def base_latent() -> dict:
    with np.load(SAMPLES / "latents" / "face_00.npz") as f:
        return dict(f)


def latent_file(path: Path, **changes) -> Path:
    np.savez_compressed(path, **{k: v for k, v in (base_latent() | changes).items() if v is not None})
    return path


def with_good(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for stem in GOOD:
        shutil.copy(SAMPLES / "latents" / f"{stem}.npz", folder)
    return folder


@pytest.fixture(scope="module")
def hostile_latents(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A folder of every LATENT_CASES file, a FIFO and the GOOD ones; {file name: reason}."""
    folder = with_good(tmp_path_factory.mktemp("latents"))
    expected = {}
    for stem, (changes, reason) in LATENT_CASES.items():
        latent_file(folder / f"{stem}.npz", **changes)
        expected[f"{stem}.npz"] = reason
    os.mkfifo(folder / "fifo.npz")
    expected["fifo.npz"] = "a FIFO, not a file"
    return folder, expected


def targets_named(folder: Path, stems) -> Path:
    """A folder of target images, one per stem (the sample faces)."""
    folder.mkdir()
    for i, stem in enumerate(stems):
        shutil.copy(SAMPLES / "targets" / f"face_0{i % 6}.png", folder / f"{stem}.png")
    return folder


def test_latent_files_edit_and_interpolate(loader, tmp_path, hostile_latents):
    folder, expected = hostile_latents
    res = run(loader, "edit", folder, "--target", SAMPLES / "targets" / "face_00.png", "-o", tmp_path / "edit", *STEPS)
    assert_lines(res, expected)
    assert "edited 2 latent(s)" in res["output"]
    for stem in GOOD:
        assert {f"{stem}.npz", f"{stem}.png", f"{stem}_compare.png"} <= set(os.listdir(tmp_path / "edit"))

    res = run(loader, "interpolate", folder, "-o", tmp_path / "interp", "--frames", "2", "--mode", "linear")
    assert_lines(res, expected)
    assert (tmp_path / "interp" / "linear.png").is_file()


def test_a_stored_class_must_be_one_of_the_generators(tmp_path):
    """Per file, like every other entry: a conditional generator of 3 classes and latent files
    that store class 2 and class 7 (a stand-in G: only what read_targets asks of it)."""
    data = base_latent()
    G = types.SimpleNamespace(
        name=str(data["generator"]),
        sha256=str(data["generator_sha256"]),
        c_dim=3,
        spaces=("z",),
        default_space="z",
        latent_shape=lambda space: (100,),
        noise_shapes=(),
    )
    for k in (2, 7):
        latent_file(tmp_path / f"class{k}.npz", class_index=np.array(k))
    targets, _, errors = read_targets([str(tmp_path)], G)
    assert [(t.stem, t.class_index, t.latent.shape) for t in targets] == [("class2", 2, (100,))]
    assert errors == [
        f"{tmp_path / 'class7.npz'}: stored class_index 7, generator {G.name!r} has 3 classes; give --class K"
    ]
    assert [t.stem for t in read_targets([str(tmp_path)], G, class_index=1)[0]] == ["class2", "class7"]  # --class


@pytest.mark.parametrize("command", ["project", "sweep"])
def test_latent_files_in_an_init_folder(loader, tmp_path, hostile_latents, command):
    folder, expected = hostile_latents
    stems = [Path(n).stem for n in expected] + ["face_01"]
    targets = targets_named(tmp_path / "targets", stems)
    out = tmp_path / "out"
    extra = ["--starts", "1"] + (["--wr", "0,1"] if command == "sweep" else [])
    res = run(loader, command, targets, "--init", folder, "-o", out, *STEPS, *extra)
    assert_lines(res, expected)
    if command == "project":
        assert {"face_01.npz", "face_01.png", "face_01_compare.png"} <= set(os.listdir(out))
    else:
        assert (out / "sweep.csv").read_text().count("face_01") == 2  # one row per w_r


def test_fifos_as_shared_inputs(loader, tmp_path):
    target, good = SAMPLES / "targets" / "face_00.png", SAMPLES / "latents" / "face_01.npz"
    init, direction, encoder = tmp_path / "init.npz", tmp_path / "direction.npy", tmp_path / "encoder.safetensors"
    cases = [
        (init, "project", target, "--init", init),
        (init, "sweep", target, "--init", init, "--wr", "0,1"),
        (direction, "edit", good, "--direction", direction),
        (encoder, "project", target, "--encoder", encoder),
    ]
    for i, (fifo, *args) in enumerate(cases):
        if not fifo.exists():
            os.mkfifo(fifo)
        res = run(loader, *args, "-o", tmp_path / f"out{i}", *STEPS)
        assert_lines(res, {fifo.name: "a FIFO, not a file"})


# ---------------------------------------------------------------- directions

DIRECTION_CASES = {  # file name: (contents: an array, or bytes; reason)
    "text.npy": (np.array(["a"] * 100), r"not a direction of numbers \(dtype <U1\)"),
    "struct.npy": (np.zeros(100, [("a", "<f4"), ("b", "<i4")]), r"not a direction of numbers \(dtype \|V8\)"),
    "complex.npy": (np.ones(100, np.complex64), r"dtype <c8"),
    "bool.npy": (np.ones(100, bool), r"dtype \|b1"),
    "nan.npy": (np.full((2, 100), np.nan, np.float32), "direction holds values that are not finite"),
    "archive.npy": ((SAMPLES / "latents" / "face_00.npz").read_bytes(), r"not a .npy direction \(an .npz archive\)"),
    "empty.npy": (b"", "not a .npy direction"),
}


def test_direction_files(loader, tmp_path):
    good = SAMPLES / "latents" / "face_01.npz"
    for name, (contents, reason) in DIRECTION_CASES.items():
        path = tmp_path / name
        if isinstance(contents, bytes):
            path.write_bytes(contents)
        else:
            np.save(path, contents)
        res = run(loader, "edit", good, "--direction", path, "-o", tmp_path / "out")
        assert_lines(res, {name: reason})


# ---------------------------------------------------------------- tuned weights


def tuned_cases(G) -> dict[str, tuple[dict, dict, str]]:
    """file stem: (metadata changed, tensors, reason) of tuned-weights files."""
    zeros = {k: torch.zeros(v.shape, dtype=torch.float16) for k, v in G.tunable().items()}
    nan = dict(zeros)
    first = next(iter(nan))
    nan[first] = torch.full_like(nan[first], float("nan"))
    tiny = {"x": torch.zeros(1)}
    return {
        "settings_deep": (dict(settings=DEEP), tiny, "settings: JSON nested more than 16 levels"),
        "metrics_nested": (dict(metrics=NESTED), tiny, "metrics: JSON nested more than 16 levels"),
        "settings_huge": (dict(settings=HUGE), tiny, "settings: 2,097,154 characters of JSON"),
        "metrics_list": (dict(metrics="[1]"), tiny, "metrics: JSON list, not dict"),
        "no_format": (dict(format="other"), tiny, "not a latent-fit tuned-weights file"),
        "foreign": (dict(generator="other", generator_sha256="0" * 64), tiny, "tuned from generator 'other'"),
        "ints": ({}, {"x": torch.zeros(1, dtype=torch.int32)}, "weight change 'x' is I32, not floats"),
        "wrong_shape": ({}, tiny, f"does not fit generator {G.name!r}"),
        "nan": ({}, nan, f"weight change {first!r} holds values that are not finite"),
        "bad_rank": (dict(rank="-3"), zeros, "rank '-3' is neither \"full\" nor a positive integer"),
        "half_pair": (dict(rank="2"), {f"{first}.lora_a": torch.zeros(1, 2)}, f"{first}.lora_a' is half of a low-rank"),
        "rank_misfit": (dict(rank="2"), zeros, "rank 2 recorded, but its largest change has rank full"),
    }


def test_tuned_weights_files(loader, tmp_path, G):
    folder = with_good(tmp_path / "latents")
    expected = {}
    meta = {
        "format": TUNED_FORMAT,
        "version": "1",
        "generator": G.name,
        "generator_sha256": G.sha256,
        "settings": "{}",
        "metrics": "{}",
    }
    for stem, (changes, tensors, reason) in tuned_cases(G).items():
        path = folder / f"{stem}.tuned.safetensors"
        save_file(tensors, str(path), metadata=meta | changes)
        latent_file(folder / f"{stem}.npz", tuned_sha256=np.array(hashlib.sha256(path.read_bytes()).hexdigest()))
        expected[path.name] = reason
    latent_file(folder / "fifo.npz", tuned_sha256=np.array("0" * 64))
    os.mkfifo(folder / "fifo.tuned.safetensors")
    expected["fifo.tuned.safetensors"] = "the tuned weights fifo.npz was made with are changed"

    res = run(loader, "edit", folder, "--target", SAMPLES / "targets" / "face_00.png", "-o", tmp_path / "edit", *STEPS)
    assert_lines(res, expected)
    assert {"face_01_compare.png", "face_02_compare.png"} <= set(os.listdir(tmp_path / "edit"))
    res = run(loader, "interpolate", folder, "-o", tmp_path / "interp", "--frames", "2", "--mode", "linear")
    assert_lines(res, expected)
    assert (tmp_path / "interp" / "linear.png").is_file()


# ---------------------------------------------------------------- encoders


def bundled_encoder() -> tuple[dict, dict]:
    with safe_open(str(BUNDLED_ENCODER), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())


def encoder_cases() -> dict[str, tuple[dict, dict, str]]:
    """file stem: (metadata changed (None: removed), tensors changed, reason) of encoder files."""
    tensors, meta = bundled_encoder()
    arch = json.loads(meta["architecture"])
    return {
        "no_architecture": (dict(architecture=None), {}, "the encoder's 'architecture' is missing"),
        "wide": (
            dict(architecture=json.dumps(arch | {"widths": [40_000] * 4})),
            {},
            "encoder architecture out of range",
        ),
        "lying": (
            dict(architecture=json.dumps(arch | {"widths": [32, 64, 128, 128]})),
            {},
            "tensor '.*' does not fit the encoder its architecture describes",
        ),
        "deep": (dict(training=DEEP), {}, "training: JSON nested more than 16 levels"),
        "nested": (dict(validation_psnr=NESTED), {}, "validation_psnr: JSON nested more than 16 levels"),
        "huge": (dict(command=HUGE), {}, "command: 2,097,154 characters of JSON"),
        "space_list": (dict(space='["z"]'), {}, "the encoder's 'space' is not a str"),
        "no_format": (dict(format=None), {}, "not a latent-fit encoder"),
        "foreign": (
            dict(generator='"other"', generator_sha256=json.dumps("0" * 64)),
            {},
            "encoder trained for generator 'other'",
        ),
        "ints": ({}, {"centre": tensors["centre"].int()}, "tensor 'centre' does not fit"),
        "nan": (
            {},
            {"scale": torch.full_like(tensors["scale"], float("nan"))},
            "weights hold values that are not finite",
        ),
    }


def test_encoder_files(loader, tmp_path):
    tensors, meta = bundled_encoder()
    target = SAMPLES / "targets" / "face_00.png"
    for stem, (changes, changed, reason) in encoder_cases().items():
        path = tmp_path / f"{stem}.safetensors"
        card = {k: v for k, v in (meta | changes).items() if v is not None}
        save_file(tensors | changed, str(path), metadata=card)
        res = run(loader, "project", target, "--encoder", path, "-o", tmp_path / "out", *STEPS)
        assert_lines(res, {path.name: reason})
        assert res["grew_mb"] < 1024, res["grew_mb"]  # nothing of the declared size was allocated


SAME = json.dumps({"steps": 2})  # the settings of the run that reads the checkpoint


@pytest.mark.parametrize(
    "state, why",
    [
        (dict(settings=DEEP), "LatentFitError"),
        (dict(settings=NESTED), "LatentFitError"),
        (dict(settings="[]"), "LatentFitError"),
        (dict(settings=SAME, step="1"), "its step or states are damaged"),
        (dict(settings=SAME, step=-1), "its step or states are damaged"),
        (dict(settings=SAME, encoder=[]), "its step or states are damaged"),
    ],
)
def test_damaged_training_checkpoints_start_over(tmp_path, state, why):
    """A train-encoder checkpoint is read back by read_checkpoint: a damaged one means starting over."""
    path = tmp_path / "enc.safetensors.ckpt"
    torch.save({"step": 1, "encoder": {}, "optimizer": {}} | state, path)
    said = []
    assert read_checkpoint(path, SAME, said.append) is None
    assert said == [f"checkpoint {path} is unreadable ({why}): starting over"]


# ---------------------------------------------------------------- the output folder


def test_report_survives_what_lies_in_the_output_folder(loader, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / "pipe.png")
    os.mkfifo(out / "stray.npz")
    (out / "bomb.png").write_bytes(png_bomb(40_000, 40_000))  # over Pillow's own limit
    (out / "big.png").write_bytes(png_bomb(10_000, 10_000))  # under it, over latent-fit's
    os.symlink("loop.png", out / "loop.png")
    np.save(tmp_path / "d.npy", np.ones(100, np.float32))
    good = SAMPLES / "latents" / "face_01.npz"
    run(loader, "edit", good, "--direction", tmp_path / "d.npy", "--strength", "-1,1", "-o", out, status=0)
    run(loader, "project", SAMPLES / "targets" / "face_01.png", "-o", out, "--init", good, *STEPS, status=0)
    page = (out / "index.html").read_text()
    links = set(re.findall(r'<img src="([^"]+)"', page))
    assert {"face_01_strip.png", "face_01_compare.png"} <= links, links
    assert not links & {"pipe.png", "bomb.png", "big.png", "loop.png"}, links


# ---------------------------------------------------------------- fuzzed fields

LATENT_TYPES = {
    "class_index": "int",
    "version": "int",
    "tuned_sha256": "str",
    "space": "str",
    "generator": "str",
    "generator_sha256": "str",
    "config": "dict",
    "metrics": "dict",
    "record": "dict",
    "latent": "ndarray",
    "latent_init": "ndarray",
    "w": "ndarray",
    "noise_0": "ndarray",
    "loss_history": "ndarray",
}
DTYPES = [
    np.int8,
    np.int64,
    np.uint64,
    np.float16,
    np.float32,
    np.float64,
    np.bool_,
    np.complex64,
    np.dtype("<U4"),
    np.dtype("S4"),
    np.dtype([("a", "<f4")]),
    np.dtype(">f8"),
]
json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=4),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c, max_size=3),
    max_leaves=40,
)
json_texts = (
    json_values.map(json.dumps)
    | st.integers(1, 3000).map(lambda n: "[" * n + "]" * n)
    | st.text(alphabet='[]{}":,1a ', max_size=60)
)
numpy_values = st.sampled_from(DTYPES).flatmap(
    lambda dt: arrays(dt, st.sampled_from([(), (1,), (2,), (100,), (2, 100)]))
)


def test_fuzzed_latent_entries(loader, tmp_path):
    @FAST
    @given(st.sampled_from(sorted(LATENT_TYPES)), numpy_values | json_texts.map(np.array))
    def check(key, value):
        path = latent_file(tmp_path / "fuzzed.npz", **{key: value})
        res = loader("latent", path)
        if res["outcome"] != "ok":
            assert_clean_error(res, path)
        else:  # what the readers hand on has the documented type
            assert res["value"][key] == LATENT_TYPES[key], (key, value, res)

    check()


def test_fuzzed_direction_files(loader, tmp_path):
    @FAST
    @given(numpy_values)
    def check(value):
        path = tmp_path / "fuzzed.npy"
        np.save(path, value)
        res = loader("direction", path, shape=[100])
        if res["outcome"] != "ok":
            assert_clean_error(res, path)
        else:
            assert value.dtype.kind in "fiu" and value.shape[-1:] == (100,) and res["value"] == "Tensor", res

    check()


def tiny_encoder() -> tuple[dict, dict]:
    """The tensors and card of a small encoder (one level of one channel, a latent of 2 numbers)."""
    E = Encoder("z", (2,), torch.zeros(2), torch.ones(2), widths=(1,), hidden=1)
    card = {
        "format": ENCODER_FORMAT,
        "generator": "g",
        "generator_sha256": "",
        "space": "z",
        "architecture": E.architecture(),
    }
    return E.state_dict(), {k: json.dumps(v) for k, v in card.items()}


def test_fuzzed_tuned_and_encoder_metadata(loader, tmp_path):
    tensors, meta = tiny_encoder()
    tuned_meta = {"format": TUNED_FORMAT, "generator": "g", "generator_sha256": "", "settings": "{}", "metrics": "{}"}

    @FAST
    @given(st.sampled_from(["settings", "metrics", "architecture", "space", "generator", "training"]), json_texts)
    def check(key, text):
        tuned, encoder = tmp_path / "fuzzed.tuned.safetensors", tmp_path / "fuzzed.safetensors"
        save_file({"x": torch.zeros(2)}, str(tuned), metadata=tuned_meta | {key: text})
        save_file(tensors, str(encoder), metadata=meta | {key: text})
        res = loader("tuned", tuned)
        if res["outcome"] != "ok":
            assert_clean_error(res, tuned)
        else:
            assert res["value"]["settings"] == res["value"]["metrics"] == "dict", res
        res = loader("encoder", encoder)
        if res["outcome"] != "ok":
            assert_clean_error(res, encoder)

    check()
