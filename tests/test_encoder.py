"""Encoders: the bundled one starts projection near the answer; train-encoder resumes after a
kill and refuses a checkpoint made with other settings; StyleGAN2 encoders in w and w+."""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from latent_fit import encoder
from latent_fit.encoder import load_encoder, new_encoder, read_encoder, train_encoder, validation_psnr
from latent_fit.errors import LatentFitError
from latent_fit.generators.stylegan2 import StyleGAN2Generator
from latent_fit.objective import pixel_mse, psnr

ROOT = Path(__file__).resolve().parents[1]
TINY_SG2 = dict(
    z_dim=8,
    c_dim=0,
    w_dim=16,
    img_resolution=16,
    img_channels=3,
    mapping_kwargs=dict(num_layers=2),
    synthesis_kwargs=dict(channel_base=128, channel_max=16),
)


@pytest.fixture(scope="module")
def E(G):
    return load_encoder("auto", G)


def test_bundled_encoder_start_beats_random_starts(G, E, in_domain):
    """On held-out targets (the encoder never saw seed 123), G(E(x)) is closer to x than the best
    of 16 random starts at every target, by a wide margin in the median."""
    targets, _ = in_domain
    with torch.no_grad():
        start = psnr(pixel_mse(G.synthesize(E(targets)), targets))
        rand = torch.stack([psnr(pixel_mse(G.synthesize(G.sample(8, seed=s)), targets)) for s in range(16)])
    best = rand.max(0).values
    assert (start > best).all() and start.median() > best.median() + 2
    assert E.space == "z" and E.info["generator_sha256"] == G.sha256


def test_bundled_encoder_card_and_batch_independence(G, E, in_domain):
    targets, _ = in_domain
    with torch.no_grad():
        together, alone = E(targets), torch.cat([E(t[None]) for t in targets])
    assert torch.allclose(together, alone, atol=1e-5)
    card = (ROOT / "weights" / "digiface-dcgan64-encoder.md").read_text()
    assert "latent-fit train-encoder" in card and E.info["validation_psnr"]["median"] > 15


def test_load_encoder_refusals(G, tmp_path, monkeypatch):
    assert load_encoder("none", G) is None
    sg2 = StyleGAN2Generator(**TINY_SG2).freeze()
    assert load_encoder("auto", sg2) is None  # no bundled encoder for other generators
    with pytest.raises(LatentFitError, match="trained for generator 'digiface-dcgan64'"):
        load_encoder(ROOT / "weights" / "digiface-dcgan64-encoder.safetensors", sg2)
    with pytest.raises(LatentFitError, match="predicts z latents, not w"):
        load_encoder("auto", G, space="w")
    with pytest.raises(LatentFitError, match="not found"):
        load_encoder(tmp_path / "missing.safetensors", G)
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(LatentFitError, match="not a readable"):
        load_encoder(tmp_path / "bad.safetensors", G)
    monkeypatch.setitem(encoder.BUNDLED_ENCODERS, G.name, (encoder.BUNDLED_ENCODERS[G.name][0], "0" * 64))
    with pytest.raises(LatentFitError, match="does not match the model card"):
        load_encoder("auto", G)


@pytest.mark.parametrize("space", ["w", "w+"])
def test_stylegan2_encoder_shapes(space, tmp_path):
    torch.manual_seed(0)
    sg2 = StyleGAN2Generator(**TINY_SG2).freeze()
    enc = train_encoder(sg2, space=space, steps=3, batch_size=4)
    x = sg2.synthesize(sg2.sample(5, seed=7, space=space), space)
    assert enc(x).shape == (5, *sg2.latent_shape(space)) and enc.space == space
    untrained = new_encoder(sg2, space)  # output starts at the space's centre
    assert torch.allclose(untrained(x).mean(0), sg2.mean_latent(space)[0], atol=0.5 * float(untrained.scale.max()))
    assert validation_psnr(enc, sg2, n=8).shape == (8,)


def _cli(out, *extra):
    cmd = [
        sys.executable,
        "-m",
        "latent_fit",
        "train-encoder",
        "-o",
        str(out),
        "--device",
        "cpu",
        "--checkpoint-minutes",
        "0.005",
        *map(str, extra),
    ]
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return cmd, env


def test_train_encoder_resumes_after_a_kill(tmp_path):
    out = tmp_path / "e.safetensors"
    ckpt = tmp_path / "e.safetensors.ckpt"
    cmd, env = _cli(out, "--steps", 40, "--batch-size", 2)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    step = 0
    while time.monotonic() < deadline and proc.poll() is None:
        if ckpt.is_file():
            try:
                step = torch.load(ckpt, weights_only=True)["step"]
            except Exception:  # replaced while reading
                step = 0
            if step >= 3:
                break
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert 3 <= step < 40 and not out.exists()

    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    resumed = int(done.stdout.split("at step ")[1].split("/")[0])
    assert resumed >= step and "validation PSNR" in done.stdout
    assert out.is_file() and not ckpt.exists()
    assert read_encoder(out).info["training"]["steps"] == 40


def test_train_encoder_with_real_images(tmp_path, cli):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (80, 80, 3), np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "e.safetensors"
    res = cli("train-encoder", "-o", out, "--steps", 2, "--batch-size", 4, "--images", folder, "--device", "cpu")
    assert res.exit_code == 0, res.output
    info = read_encoder(out).info
    assert info["images"] == str(folder) and info["training"]["image_batch"] == 1
    assert "latent-fit train-encoder" in (tmp_path / "e.md").read_text()


def test_train_encoder_other_settings_start_over(tmp_path, cli):
    out = tmp_path / "e.safetensors"
    torch.save({"settings": '{"batch_size": 2, "steps": 5}', "step": 3}, tmp_path / "e.safetensors.ckpt")
    res = cli("train-encoder", "-o", out, "--steps", 2, "--batch-size", 3, "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert "other settings (batch_size 2 -> 3" in res.output and "starting over" in res.output
    assert set(load_file(out)) >= {"centre", "scale"} and "validation PSNR" in res.output


def test_resumed_training_equals_an_uninterrupted_run():
    """Samples are keyed by step and the checkpoint holds weights and Adam state: resuming at
    step 3 of 6 gives bit for bit the weights of a run that was never stopped."""
    sg2 = StyleGAN2Generator(**TINY_SG2).freeze()
    states = []
    full = train_encoder(sg2, space="w", steps=6, batch_size=3, checkpoint=states.append, checkpoint_every=0)
    assert [st["step"] for st in states][:3] == [1, 2, 3]
    resumed = train_encoder(sg2, space="w", steps=6, batch_size=3, state=states[2])
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
