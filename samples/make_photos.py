"""Cut the real face photos in samples/photos/ out of sample images that PyPI packages ship.

- grace_hopper.png: matplotlib's mpl-data/sample_data/grace_hopper.jpg (U.S. Navy portrait of
  Rear Admiral Grace Hopper, 1984; a work of the U.S. government, public domain).
- cameraman.png (grayscale): scikit-image's data/camera.png (CC0, photographer Lav Varshney).
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
here.mkdir(exist_ok=True)
for name, (src, box) in CROPS.items():
    with Image.open(src) as im:
        im.crop(box).resize((200, 200), Image.LANCZOS).save(here / name, optimize=True)
