"""The visualizer's images: wallpapers that ship in Debian packages, scaled, split by wallpaper, cached.

Sources (``apt-get install gnome-backgrounds mate-backgrounds plasma-workspace-wallpapers``; only
training needs them, so ``scripts/setup.sh`` does not install them; nothing is downloaded by liveart):

- ``gnome-backgrounds``: /usr/share/backgrounds/gnome (light and dark variants of one design are
  one wallpaper);
- ``mate-backgrounds``: /usr/share/backgrounds/mate/{abstract,desktop,nature};
- ``plasma-workspace-wallpapers``: /usr/share/wallpapers/NAME/contents/images/ (one picture in
  several sizes: the largest landscape one is taken; screenshots are skipped).

SVG files are left out (they need a renderer this package does not depend on). Each wallpaper is
scaled so its shorter side is WORK_SIDE pixels and kept as uint8 RGB. Training draws random
square crops (a side of CROP_MIN to CROP_MAX of the short side), resized to the training size and
flipped at random (:func:`random_crops`).

The split is by region: the last HELD_OUT_BAND of every wallpaper's long side is held out, and
evaluation crops come from there only; training crops never touch it. (Holding out whole wallpapers was tried first: with the first version of the distance, real crops
of the training wallpapers were then 166 (SWD x 1000) from crops of the held-out ones, further than
the held-out crops blurred (158) — a target no generator could meet. With held-out regions and the
distance as it now is: real training-region crops are 106 from evaluation crops, blurred ones 175
(one octave) and 315 (two), uniform noise 764, a second draw of evaluation crops 39.)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATASET_VERSION = 1
ROOTS = (Path("/usr/share/backgrounds"), Path("/usr/share/wallpapers"))
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
WORK_SIDE = 384
CROP_MIN, CROP_MAX = 0.35, 0.7  # crop side as a share of the short side (within the region)
HELD_OUT_BAND = 0.4  # share of each wallpaper's long side kept for evaluation
DEFAULT_CACHE = Path(".cache") / f"visual-dataset-v{DATASET_VERSION}.npz"


@dataclass
class Wallpaper:
    name: str
    path: Path


@dataclass
class VisualDataset:
    names: list[str]
    images: list[np.ndarray]  # uint8 (H, W, 3), short side WORK_SIDE


def region(shape: tuple, part: str) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the ``train`` or ``eval`` region of an image of ``shape`` (H, W, 3): the
    last HELD_OUT_BAND of the long side is ``eval``."""
    h, w = shape[:2]
    if w >= h:
        cut = int(round(w * (1 - HELD_OUT_BAND)))
        return (0, h, 0, cut) if part == "train" else (0, h, cut, w)
    cut = int(round(h * (1 - HELD_OUT_BAND)))
    return (0, cut, 0, w) if part == "train" else (cut, h, 0, w)


def _variant_key(path: Path) -> str:
    """One name per wallpaper: plasma's folder, gnome's design without its -l/-d suffix."""
    parts = path.parts
    if "contents" in parts:  # plasma: /usr/share/wallpapers/NAME/contents/images/WxH.png
        return "plasma/" + parts[parts.index("contents") - 1]
    stem = re.sub(r"[-_]\d+x\d+$", "", path.stem)  # one picture in several sizes
    stem = re.sub(r"[-_](l|d|light|dark|day|night)$", "", stem, flags=re.IGNORECASE)
    return f"{path.parent.name}/{stem}"


def _pixels(path: Path) -> int:
    m = re.match(r"(\d+)x(\d+)$", path.stem)
    return int(m.group(1)) * int(m.group(2)) if m and int(m.group(1)) >= int(m.group(2)) else 0


def find_wallpapers(roots=ROOTS) -> list[Wallpaper]:
    """Every wallpaper once, sorted by name (the largest landscape file of each)."""
    best: dict[str, Path] = {}
    for root in roots:
        if not root.is_dir():
            continue
        for dirpath, _, files in os.walk(root):
            for f in files:
                path = Path(dirpath) / f
                if path.suffix.lower() not in IMAGE_SUFFIXES or "screenshot" in f.lower():
                    continue
                key = _variant_key(path)
                current = best.get(key)
                if current is None or _pixels(path) > _pixels(current) or (
                        _pixels(path) == _pixels(current) and str(path) < str(current)):
                    best[key] = path
    return [Wallpaper(k, best[k]) for k in sorted(best)]


def load_image(path: Path, short_side: int = WORK_SIDE) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        scale = short_side / min(w, h)
        im = im.resize((max(short_side, round(w * scale)), max(short_side, round(h * scale))), Image.LANCZOS)
        return np.asarray(im, np.uint8).copy()


def build(roots=ROOTS) -> VisualDataset:
    wallpapers = find_wallpapers(roots)
    if not wallpapers:
        from ..errors import LiveartError

        raise LiveartError("no wallpapers found; install them: sudo apt-get install gnome-backgrounds mate-backgrounds "
                           "plasma-workspace-wallpapers")
    images, names = [], []
    for w in wallpapers:
        try:
            images.append(load_image(w.path))
            names.append(w.name)
        except OSError:
            continue  # a file Pillow cannot read is left out
    return VisualDataset(names, images)


def load_or_build(cache: str | Path = DEFAULT_CACHE, rebuild: bool = False) -> VisualDataset:
    cache = Path(cache)
    if cache.exists() and not rebuild:
        with np.load(cache, allow_pickle=False) as z:
            names = [str(n) for n in z["names"]]
            return VisualDataset(names, [z[f"image_{i}"] for i in range(len(names))])
    data = build()
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.name + ".tmp.npz")
    np.savez(tmp, names=np.array(data.names),
             **{f"image_{i}": im for i, im in enumerate(data.images)})
    os.replace(tmp, cache)
    return data


def random_crops(data: VisualDataset, part: str, count: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` random square crops from the ``train`` or ``eval`` region of random images, resized to
    ``size``, flipped at random: float32 (count, 3, size, size) in -1..1."""
    from PIL import Image

    out = np.empty((count, 3, size, size), np.float32)
    picks = rng.integers(0, len(data.images), size=count)
    for k, i in enumerate(picks):
        im = data.images[i]
        y0, y1, x0, x1 = region(im.shape, part)
        short = min(im.shape[:2])
        side = min(int(round(short * rng.uniform(CROP_MIN, CROP_MAX))), y1 - y0, x1 - x0)
        y = int(rng.integers(y0, y1 - side + 1))
        x = int(rng.integers(x0, x1 - side + 1))
        crop = Image.fromarray(im[y : y + side, x : x + side]).resize((size, size), Image.BILINEAR)
        a = np.asarray(crop, np.float32)
        if rng.random() < 0.5:
            a = a[:, ::-1]
        out[k] = a.transpose(2, 0, 1) / 127.5 - 1.0
    return out
