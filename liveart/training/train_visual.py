"""Train the visualizer's generator as a GAN on wallpaper crops; keep the best by SWD; export ONNX.

    liveart train visual --minutes 60 --seed 1 --out models

Hinge loss, Adam (2e-4, betas 0 and 0.99) for both networks, one discriminator step per generator
step, batch BATCH of random training-region crops at 128x128 (flipped at random). With a few dozen
wallpapers the discriminator soon learns the training crops by heart (a first run's distance rose
again after 500 steps), so by default everything it sees, real and generated, goes through
differentiable augmentation (DiffAugment, Zhao et al. 2020: brightness, saturation, contrast, a
translation of up to 1/8 of the side, a cutout of half the side), the generator learning through it. An exponential
moving average of the generator's weights (decay ramped up to EMA_DECAY) is what is evaluated and exported. Every
EVAL_EVERY steps: the sliced Wasserstein distance (x 1000) between EVAL_IMAGES samples of the EMA
generator and as many crops of the held-out regions (fixed), beside the blurred-crops baseline;
the best checkpoint is kept and training can resume from the last one (``--resume``).
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import swd
from .visual_data import VisualDataset, random_crops
from .visual_model import Discriminator, GanConfig, Generator, GeneratorExport, parameter_count

BATCH = 16
LR = 2e-4
LR_FINAL = 2e-5
EMA_DECAY = 0.999
EVAL_EVERY = 250
EVAL_IMAGES = 256
ONNX_OPSET = 17
MODEL_KIND = "liveart-visual-generator"
SHOWN_SIZE = 512


@dataclass
class VisualTrainResult:
    steps: int
    best_swd: float
    blurred_swd: float
    seconds: float
    onnx: Path


AUGMENT = ("color", "translation", "cutout")


def diff_augment(x: torch.Tensor, policy=AUGMENT) -> torch.Tensor:
    """DiffAugment on a batch (B, 3, H, W) in -1..1, each image drawn its own way from torch's
    (seeded) random generator; differentiable in ``x``."""
    b, _, h, w = x.shape
    if "color" in policy:
        x = x + (torch.rand(b, 1, 1, 1) - 0.5)
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * (torch.rand(b, 1, 1, 1) * 2.0) + mean
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * (torch.rand(b, 1, 1, 1) + 0.5) + mean
    if "translation" in policy:
        sy, sx = h // 8, w // 8
        dy = torch.randint(-sy, sy + 1, (b,)).tolist()
        dx = torch.randint(-sx, sx + 1, (b,)).tolist()
        padded = nn.functional.pad(x, (sx, sx, sy, sy))
        x = torch.stack([padded[i, :, sy - dy[i] : sy - dy[i] + h, sx - dx[i] : sx - dx[i] + w] for i in range(b)])
    if "cutout" in policy:
        ch, cw = h // 2, w // 2
        cy = torch.randint(0, h - ch + 1, (b,)).tolist()
        cx = torch.randint(0, w - cw + 1, (b,)).tolist()
        mask = torch.ones(b, 1, h, w)
        for i in range(b):
            mask[i, :, cy[i] : cy[i] + ch, cx[i] : cx[i] + cw] = 0.0
        x = x * mask
    return x


@torch.no_grad()
def sample(g: Generator, count: int, seed: int) -> np.ndarray:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for k in range(0, count, 64):
        z = torch.randn(min(64, count - k), g.config.z_dim, generator=gen)
        out.append(g(z).numpy())
    return np.concatenate(out)


def train(data: VisualDataset, config: GanConfig, out_dir: Path, seed: int = 1, minutes: float = 60.0,
          threads: int = 2, resume: bool = False, progress: bool = True, name: str = "visual",
          eval_every: int = EVAL_EVERY, eval_images: int = EVAL_IMAGES, batch: int = BATCH,
          max_steps: int | None = None, augment: tuple = AUGMENT, lr_decay: bool = False,
          lr: float = LR, init: Path | None = None) -> VisualTrainResult:
    """Train for ``minutes`` (or until ``max_steps`` steps: with the same seed, batch and one thread
    a run of so many steps gives the same weights again). With ``lr_decay`` both learning rates fall
    linearly from ``lr`` to a tenth of it over the second half of the budget (by steps where ``max_steps`` is
    given, else by time). ``init``: a checkpoint (``visual.pt``) whose generator (its weights'
    average) the run starts from, with a new discriminator: a second run that refines a first."""
    from tqdm import tqdm

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    last_path, best_path = out_dir / f"{name}.last.pt", out_dir / f"{name}.pt"
    g, d = Generator(config), Discriminator(config)
    if init is not None and not (resume and last_path.exists()):
        from ..errors import LiveartError

        if not Path(init).is_file():
            raise LiveartError(f"{init}: no such checkpoint (--init wants a visual.pt from an earlier run)")
        start = torch.load(init, map_location="cpu", weights_only=False)
        d_only = ("mbstd", "low_d")  # the discriminator's settings
        g_config = {k: v for k, v in config.to_dict().items() if k not in d_only}
        if {k: v for k, v in start["config"].items() if k not in d_only} != g_config:
            raise LiveartError(f"{init}: its generator is {start['config']}, not {g_config}")
        g.load_state_dict(start["g_ema"])
    g_ema = copy.deepcopy(g).eval()
    opt_g = torch.optim.Adam(g.parameters(), lr=lr, betas=(0.0, 0.99))
    opt_d = torch.optim.Adam(d.parameters(), lr=lr, betas=(0.0, 0.99))
    step, best, history, spent = 0, math.inf, [], 0.0
    wrote_best = False
    if resume and last_path.exists():
        ckpt = torch.load(last_path, map_location="cpu", weights_only=False)
        if GanConfig(**ckpt["config"]).to_dict() != config.to_dict():  # a field added since takes its default
            from ..errors import LiveartError

            raise LiveartError(f"{last_path}: was trained with {ckpt['config']}, not {config.to_dict()}; "
                               f"resume with the same settings or train afresh")
        for module, key in ((g, "g"), (d, "d"), (g_ema, "g_ema"), (opt_g, "opt_g"), (opt_d, "opt_d")):
            module.load_state_dict(ckpt[key])
        step, best, history, spent = ckpt["step"], ckpt["best"], ckpt["history"], ckpt["seconds"]
        wrote_best = best_path.exists() and math.isfinite(best)
        torch.set_rng_state(ckpt["torch_rng"])  # a resumed run goes on as an uninterrupted one would
        rng.bit_generator.state = ckpt["numpy_rng"]
    eval_real = random_crops(data, "eval", eval_images, config.size, np.random.default_rng(12345))
    blurred_swd = swd.sliced_wasserstein(swd.blurred(random_crops(data, "eval", eval_images, config.size,
                                                                  np.random.default_rng(54321)), 1), eval_real)[0]
    started = time.monotonic() - spent
    bar = tqdm(disable=not progress, desc=name, unit="step", initial=step)
    aug = (lambda x: diff_augment(x, augment)) if augment else (lambda x: x)
    while time.monotonic() - started < minutes * 60 and (max_steps is None or step < max_steps):
        if lr_decay:
            done = step / max_steps if max_steps is not None else (time.monotonic() - started) / (minutes * 60)
            now = lr + (lr * LR_FINAL / LR - lr) * min(1.0, max(0.0, 2.0 * done - 1.0))
            for opt in (opt_g, opt_d):
                for group in opt.param_groups:
                    group["lr"] = now
        real = torch.from_numpy(random_crops(data, "train", batch, config.size, rng))
        z = torch.randn(batch, config.z_dim)
        with torch.no_grad():
            fake = g(z)
        loss_d = sum(nn.functional.relu(1.0 - s).mean() for s in d(aug(real))) \
            + sum(nn.functional.relu(1.0 + s).mean() for s in d(aug(fake)))
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        loss_g = -sum(s.mean() for s in d(aug(g(torch.randn(batch, config.z_dim)))))
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        with torch.no_grad():
            # A ramped decay: early on the average follows the generator (a fixed 0.999 would still
            # weigh the random initial weights 61% after 500 steps; a first run collapsed that way).
            decay = min(EMA_DECAY, (1.0 + step) / (10.0 + step))
            for pe, p in zip(g_ema.parameters(), g.parameters()):
                pe.lerp_(p, 1.0 - decay)
            for be, b in zip(g_ema.buffers(), g.buffers()):
                be.copy_(b)
        step += 1
        bar.update(1)
        bar.set_postfix(d=f"{loss_d.item():.3f}", g=f"{loss_g.item():.3f}")
        if step % eval_every == 0:
            distance = swd.sliced_wasserstein(sample(g_ema, eval_images, seed), eval_real)[0]
            elapsed = time.monotonic() - started
            history.append({"step": step, "swd": round(distance, 2), "minutes": round(elapsed / 60, 2)})
            if progress:
                print(f"{name} step {step}: SWD x1000 {distance:.1f} (blurred crops {blurred_swd:.1f}), "
                      f"{elapsed / 60:.1f} min", flush=True)
            state = {"config": config.to_dict(), "seed": seed, "step": step, "history": history, "seconds": elapsed}
            if distance < best:
                best = distance
                wrote_best = True
                tmp = best_path.with_name(best_path.name + ".part")
                torch.save({**state, "g_ema": g_ema.state_dict(), "swd": distance}, tmp)
                tmp.replace(best_path)
            tmp = last_path.with_name(last_path.name + ".part")
            torch.save({**state, "best": best, "g": g.state_dict(), "d": d.state_dict(), "g_ema": g_ema.state_dict(),
                        "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(), "torch_rng": torch.get_rng_state(),
                        "numpy_rng": rng.bit_generator.state}, tmp)
            tmp.replace(last_path)
    bar.close()
    if not wrote_best:  # the budget ended before the first evaluation (an older file is not this run's)
        torch.save({"config": config.to_dict(), "seed": seed, "step": step, "history": history,
                    "g_ema": g_ema.state_dict(), "swd": math.inf}, best_path)
    onnx_path = out_dir / f"{name}-generator.onnx"
    export_onnx(best_path, onnx_path)
    meta = {"config": config.to_dict(), "seed": seed, "steps": step, "best_swd": best, "blurred_swd": blurred_swd,
            "history": history, "parameters": {"generator": parameter_count(g), "discriminator": parameter_count(d)},
            "minutes": (time.monotonic() - started) / 60, "batch": batch, "augment": list(augment),
            "lr_decay": lr_decay, "lr": lr, "init": str(init) if init is not None else None}
    (out_dir / f"{name}.train.json").write_text(json.dumps(meta, indent=1) + "\n")
    return VisualTrainResult(step, best, blurred_swd, time.monotonic() - started, onnx_path)


def export_onnx(checkpoint: Path, path: Path, shown: int = SHOWN_SIZE, weights: str = "g_ema") -> None:
    """Export a checkpoint's generator: its weights' average (``g_ema``, the default) or, from a
    last checkpoint, the generator itself (``g``)."""
    import onnx

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    g = Generator(GanConfig(**ckpt["config"]))
    g.load_state_dict(ckpt[weights])
    net = GeneratorExport(g.eval()).eval()
    tmp = path.with_name(path.name + ".part")
    z = torch.zeros(1, g.config.z_dim)
    torch.onnx.export(net, (z,), str(tmp), input_names=["z"], output_names=["image"], opset_version=ONNX_OPSET,
                      dynamo=False, dynamic_axes={"z": {0: "batch"}, "image": {0: "batch"}})
    model = onnx.load(str(tmp))
    for k, v in {"kind": MODEL_KIND, "z_dim": g.config.z_dim, "trained_size": g.config.size, "shown_size": shown,
                 "swd": f"{ckpt.get('swd', float('nan')):.2f}", "step": ckpt["step"], "seed": ckpt["seed"],
                 "parameters": parameter_count(g)}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, str(v)
    onnx.save(model, str(tmp))
    tmp.replace(path)
