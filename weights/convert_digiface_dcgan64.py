"""Convert the DCGAN of `gan-face-generate` 1.1.1 into weights/digiface-dcgan64.safetensors.

Run once, by hand (the package is not a dependency of latent-fit):
    pip download --no-deps gan-face-generate==1.1.1 -d /tmp/gfg
    unzip -o /tmp/gfg/gan_face_generate-1.1.1-py3-none-any.whl -d /tmp/gfg/whl
    python weights/convert_digiface_dcgan64.py /tmp/gfg/whl/gan_face_generate/weights.tar
then paste the printed sha256 into latent_fit/generators/dcgan.py and the model card.
"""

import hashlib
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

src = Path(sys.argv[1])
state = torch.load(src, map_location="cpu", weights_only=True)["netG_state_dict"]
tensors = {k: v.contiguous() for k, v in state.items() if not k.endswith("num_batches_tracked")}
out = Path(__file__).with_name("digiface-dcgan64.safetensors")
save_file(tensors, out, metadata={"source": "gan-face-generate==1.1.1 gan_face_generate/weights.tar", "license": "MIT"})
print(out, hashlib.sha256(out.read_bytes()).hexdigest())
