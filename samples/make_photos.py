"""Cut the real face photos in samples/photos/ out of sample images that PyPI packages ship.

- grace_hopper.png: matplotlib's mpl-data/sample_data/grace_hopper.jpg (U.S. Navy portrait of
  Rear Admiral Grace Hopper, 1984; a work of the U.S. government, public domain).
- cameraman.png (grayscale): scikit-image's data/camera.png (CC0, photographer Lav Varshney).
- grace_hopper_whole.png: the whole Grace Hopper portrait, uncropped (face, uniform, flag), scaled
  to 256 px wide: a photo for the face pipeline (latent_fit.faces) to find, align and paste back.
Needs matplotlib and scikit-image installed (only to regenerate; latent-fit does not need them).
"""

from pathlib import Path

import matplotlib
import skimage
from PIL import Image

here = Path(__file__).parent / "photos"
CROPS = {  # output name: (source file, (left, top, right, bottom)) square boxes around the head
    "grace_hopper.png": (Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg", (120, 30, 410, 320)),
    "cameraman.png": (Path(skimage.__file__).parent / "data" / "camera.png", (120, 50, 300, 230)),
}
WHOLE = {"grace_hopper_whole.png": (CROPS["grace_hopper.png"][0], 256)}  # output name: (source, width)
here.mkdir(exist_ok=True)
for name, (src, box) in CROPS.items():
    with Image.open(src) as im:
        im.crop(box).resize((200, 200), Image.LANCZOS).save(here / name, optimize=True)
for name, (src, width) in WHOLE.items():
    with Image.open(src) as im:
        im.resize((width, round(im.height * width / im.width)), Image.LANCZOS).save(here / name, optimize=True)
