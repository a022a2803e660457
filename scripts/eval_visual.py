"""Evaluate a visual generator: image quality against held-out crops, and frames a second.

    .venv/bin/python scripts/eval_visual.py --model models/visual-generator.onnx [--images 256]

Quality: the sliced Wasserstein distance (x 1000, liveart.training.swd) between the generator's
images (at its training size, from seeded latents) and crops of the held-out regions of the
wallpapers, beside the same distance for those crops blurred by one octave (the baseline to beat),
for a second draw of real crops (the floor) and for uniform noise. Speed: frames a second at the
shown size (generator + bicubic upsample), batch 1, one onnxruntime thread, 100 frames after 10.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from liveart.training import swd  # noqa: E402
from liveart.training import visual_data as vd  # noqa: E402
from liveart.visual.generator import VisualGenerator  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--shown", type=int, default=512)
    args = ap.parse_args()
    data = vd.load_or_build()
    gen = VisualGenerator(args.model, shown=args.shown, device="cpu", threads=1)
    size = gen.trained_size
    real = vd.random_crops(data, "eval", args.images, size, np.random.default_rng(12345))
    again = vd.random_crops(data, "eval", args.images, size, np.random.default_rng(777))
    z = np.random.default_rng(0).standard_normal((args.images, gen.z_dim)).astype(np.float32)
    fake = np.concatenate([gen.raw(z[k : k + 32]) for k in range(0, len(z), 32)]) * 2.0 - 1.0
    rows = [("generator", fake), ("real crops again (floor)", again), ("blurred crops (baseline)", swd.blurred(again, 1)),
            ("uniform noise", np.random.default_rng(1).uniform(-1, 1, real.shape).astype(np.float32))]
    print(f"SWD x1000 against {args.images} held-out crops at {size}x{size}:")
    for name, images in rows:
        total, levels = swd.sliced_wasserstein(images, real)
        print(f"  {name:<26} {total:7.1f}   per level {' '.join(f'{v:.0f}' for v in levels)}")
    one = z[:1]
    for _ in range(10):
        gen.images(one)
    times = []
    for k in range(100):
        t = time.perf_counter()
        gen.images(z[k % len(z) : k % len(z) + 1])
        times.append(time.perf_counter() - t)
    t50 = float(np.median(times))
    print(f"speed at {args.shown}x{args.shown}, batch 1, one thread: median {t50 * 1e3:.1f} ms "
          f"({1 / t50:.0f} frames a second), p99 {np.percentile(times, 99) * 1e3:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
