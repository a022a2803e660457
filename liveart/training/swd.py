"""Sliced Wasserstein distance between two image sets on Laplacian-pyramid patches, after the
progressive-GAN paper (Karras et al., 2018): no pretrained network needed.

For each pyramid level (pyrDown / pyrUp with the 5-tap binomial kernel, finest first, down to
16x16), 7x7 patches are drawn from every image, each patch dimension normalised by its mean and
standard deviation over both sets pooled (the paper normalises per colour channel, each set by its
own statistics: the figures are comparable among liveart's runs, not with published ones); the distance is
the mean over NUM_PROJECTIONS random unit directions of the 1-D Wasserstein distance between the
two sets' projected patches (sorted and compared). Reported per level and averaged, x 1000.
"""

from __future__ import annotations

import numpy as np

PATCH = 7
PATCHES_PER_IMAGE = 64
NUM_PROJECTIONS = 512
MIN_LEVEL_SIZE = 16


_BINOMIAL = np.array([1, 4, 6, 4, 1], np.float32) / 16.0


def _blur(x: np.ndarray, gain: float = 1.0) -> np.ndarray:
    """Separable 5-tap binomial blur (times ``gain`` per axis), reflected at the edges."""
    k = _BINOMIAL * gain
    pad = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)), mode="reflect")
    h = sum(k[i] * pad[:, :, :, i : i + x.shape[3]] for i in range(5))
    return sum(k[i] * h[:, :, i : i + x.shape[2], :] for i in range(5))


def _gaussian_blur_down(x: np.ndarray) -> np.ndarray:
    """pyrDown: blur with the 5-tap binomial kernel and halve: (N, C, H, W) → (N, C, H/2, W/2)."""
    return _blur(x)[:, :, ::2, ::2]


def _upsample(x: np.ndarray, shape) -> np.ndarray:
    """pyrUp, as the paper's code and OpenCV: insert zeros, then blur with 4x the binomial kernel."""
    up = np.zeros((x.shape[0], x.shape[1], x.shape[2] * 2, x.shape[3] * 2), np.float32)
    up[:, :, ::2, ::2] = x
    return _blur(up, 2.0)[:, :, : shape[2], : shape[3]]


def laplacian_pyramid(images: np.ndarray) -> list[np.ndarray]:
    """images (N, 3, H, W) float → levels, finest first; the last level is the low-pass residual."""
    levels = []
    x = images.astype(np.float32)
    while x.shape[-1] > MIN_LEVEL_SIZE:
        down = _gaussian_blur_down(x)
        levels.append(x - _upsample(down, x.shape))
        x = down
    levels.append(x)
    return levels


def _patches(level: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n, c, h, w = level.shape
    ys = rng.integers(0, h - PATCH + 1, size=(n, PATCHES_PER_IMAGE))
    xs = rng.integers(0, w - PATCH + 1, size=(n, PATCHES_PER_IMAGE))
    out = np.empty((n * PATCHES_PER_IMAGE, c * PATCH * PATCH), np.float32)
    k = 0
    for i in range(n):
        for y, x in zip(ys[i], xs[i]):
            out[k] = level[i, :, y : y + PATCH, x : x + PATCH].reshape(-1)
            k += 1
    return out


def sliced_wasserstein(a_images: np.ndarray, b_images: np.ndarray, seed: int = 0) -> tuple[float, list[float]]:
    """SWD x 1000 between two sets of images (N, 3, H, W) in -1..1 (equal N): (mean, per level)."""
    rng = np.random.default_rng(seed)
    per_level = []
    for la, lb in zip(laplacian_pyramid(a_images), laplacian_pyramid(b_images)):
        pa, pb = _patches(la, rng), _patches(lb, rng)
        both = np.concatenate([pa, pb])
        mean, std = both.mean(axis=0), both.std(axis=0) + 1e-8
        pa, pb = (pa - mean) / std, (pb - mean) / std
        dirs = rng.standard_normal((pa.shape[1], NUM_PROJECTIONS)).astype(np.float32)
        dirs /= np.linalg.norm(dirs, axis=0, keepdims=True)
        proj_a = np.sort(pa @ dirs, axis=0)
        proj_b = np.sort(pb @ dirs, axis=0)
        per_level.append(float(np.mean(np.abs(proj_a - proj_b))) * 1000.0)
    return float(np.mean(per_level)), per_level


def blurred(images: np.ndarray, passes: int = 2) -> np.ndarray:
    """The blurred baseline: each image taken ``passes`` octaves down the pyramid (pyrDown) and back
    up (pyrUp): it keeps colours and layout and loses the detail of those octaves."""
    x = images.astype(np.float32)
    shape = x.shape
    for _ in range(passes):
        x = _gaussian_blur_down(x)
    for _ in range(passes):
        x = _upsample(x, (shape[0], shape[1], x.shape[2] * 2, x.shape[3] * 2))
    return x[:, :, : shape[2], : shape[3]]
