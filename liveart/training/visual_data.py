"""The visualizer's images: wallpapers that ship in Debian packages, scaled, split by wallpaper, cached.

Sources (installed by ``scripts/setup.sh``; nothing is downloaded by liveart):

- ``gnome-backgrounds``: /usr/share/backgrounds/gnome (light and dark variants of one design are
  one wallpaper);
- ``mate-backgrounds``: /usr/share/backgrounds/mate/{abstract,desktop,nature};
- ``plasma-workspace-wallpapers``: /usr/share/wallpapers/NAME/contents/images/ (one picture in
  several sizes: the largest landscape one is taken; screenshots are skipped).

SVG files are left out (they need a renderer this package does not depend on). Each wallpaper is
scaled so its shorter side is WORK_SIDE pixels and kept as uint8 RGB. Training draws random
square crops (a side of CROP_MIN to CROP_MAX of the short side), resized to the training size and
flipped at random (:func:`random_crops`). The split is by wallpaper: a hash of its name sends
about HELD_OUT_SHARE of them to ``held_out``.

Work in progress (issue 6): measured with :mod:`liveart.training.swd`, real crops of the
*training* wallpapers are 166 (SWD x 1000) from crops of the held-out wallpapers, while the
held-out crops blurred (two binomial octaves) are only 158 from them: with whole wallpapers held
out, not even real images would beat the blurred baseline. The evaluation crops should come from
held-out regions of every wallpaper instead; that split is the next step.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATASET_VERSION = 1
ROOTS = (Path("/usr/share/backgrounds"), Path("/usr/share/wallpapers"))
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
WORK_SIDE = 384
CROP_MIN, CROP_MAX = 0.35, 1.0  # crop side as a share of the short side
HELD_OUT_SHARE = 0.15
DEFAULT_CACHE = Path(".cache") / f"visual-dataset-v{DATASET_VERSION}.npz"


@dataclass
class Wallpaper:
    name: str
    path: Path


@dataclass
class VisualDataset:
    names: list[str]
    images: list[np.ndarray]  # uint8 (H, W, 3), short side WORK_SIDE
    held_out: np.ndarray  # bool per image

    def indices(self, held_out: bool) -> np.ndarray:
        return np.flatnonzero(self.held_out == held_out)


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


def is_held_out(name: str) -> bool:
    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < HELD_OUT_SHARE


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

        raise LiveartError("no wallpapers found; install the Debian packages gnome-backgrounds, mate-backgrounds and "
                           "plasma-workspace-wallpapers (scripts/setup.sh does)")
    images, names = [], []
    for w in wallpapers:
        try:
            images.append(load_image(w.path))
            names.append(w.name)
        except OSError:
            continue  # a file Pillow cannot read is left out
    return VisualDataset(names, images, np.array([is_held_out(n) for n in names]))


def load_or_build(cache: str | Path = DEFAULT_CACHE, rebuild: bool = False) -> VisualDataset:
    cache = Path(cache)
    if cache.exists() and not rebuild:
        with np.load(cache, allow_pickle=False) as z:
            names = [str(n) for n in z["names"]]
            return VisualDataset(names, [z[f"image_{i}"] for i in range(len(names))], z["held_out"])
    data = build()
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.name + ".tmp.npz")
    np.savez(tmp, names=np.array(data.names), held_out=data.held_out,
             **{f"image_{i}": im for i, im in enumerate(data.images)})
    os.replace(tmp, cache)
    return data


def random_crops(data: VisualDataset, indices: np.ndarray, count: int, size: int,
                 rng: np.random.Generator) -> np.ndarray:
    """``count`` random square crops of the images ``indices``, resized to ``size``, flipped at random:
    float32 (count, 3, size, size) in -1..1."""
    from PIL import Image

    out = np.empty((count, 3, size, size), np.float32)
    picks = rng.choice(indices, size=count)
    for k, i in enumerate(picks):
        im = data.images[i]
        h, w, _ = im.shape
        side = int(round(min(h, w) * rng.uniform(CROP_MIN, CROP_MAX)))
        y = int(rng.integers(0, h - side + 1))
        x = int(rng.integers(0, w - side + 1))
        crop = Image.fromarray(im[y : y + side, x : x + side]).resize((size, size), Image.BILINEAR)
        a = np.asarray(crop, np.float32)
        if rng.random() < 0.5:
            a = a[:, ::-1]
        out[k] = a.transpose(2, 0, 1) / 127.5 - 1.0
    return out
