"""The visualizer's image generator (torch): a DCGAN-class network trained as a GAN.

- Generator: z (Z_DIM) → 4x4x(8c) → five x2 stages (a stride-2 transposed convolution, or with
  ``upsample="nearest"`` a nearest-neighbour x2 then a 3x3 convolution; each with batch norm and
  ReLU) → 128x128 RGB in -1..1 (tanh). With c = 32 it has about 3.8 M parameters (transposed), the
  size of the field notes' speed anchor.
- Discriminator: the mirror image with spectral normalisation and leaky ReLU, hinge loss; with
  ``mbstd`` its last 4x4 features get one more channel, the standard deviation over groups of
  MBSTD_GROUP images (Karras et al., 2018): a generator that makes one picture for every latent is
  told apart from the varied real crops. With ``low_d`` (e.g. 32) a second, smaller discriminator
  judges the same pictures average-pooled to low_d x low_d (multi-scale discrimination, as in
  pix2pixHD and MSG-GAN): a critic of layout and colour masses alone, the scale where the first
  CPU run was furthest from the real crops. Its score counts beside the first in both losses.
- The exported graph (:class:`GeneratorExport`) maps the output to 0..1 at the training size; the
  run time (:mod:`liveart.visual.generator`) upsamples to the shown size (512) with Pillow's
  bicubic filter, part of the measured pipeline: onnxruntime's own cubic Resize took 59 ms a frame
  on one thread, Pillow 3.5 ms.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

Z_DIM = 128
MBSTD_GROUP = 4


@dataclass
class GanConfig:
    z_dim: int = Z_DIM
    base: int = 32  # channels at 128x128; 8x base at 4x4
    size: int = 128
    upsample: str = "transpose"  # each x2 stage: a 4x4 stride-2 transposed convolution, or "nearest" + 3x3 convolution
    mbstd: bool = False  # the discriminator sees each group's spread (minibatch standard deviation, against collapse)
    low_d: int = 0  # a second discriminator on the pictures pooled to low_d x low_d (0: none)

    def __post_init__(self):
        if self.low_d and (self.low_d < 8 or self.low_d & (self.low_d - 1) or self.low_d >= self.size):
            raise ValueError(f"low_d must be a power of two from 8 below the size {self.size}, not {self.low_d}")

    def to_dict(self) -> dict:
        return asdict(self)


class Generator(nn.Module):
    def __init__(self, config: GanConfig):
        super().__init__()
        c = config.base
        self.config = config
        widths = [8 * c, 8 * c, 4 * c, 2 * c, c, c]  # 4, 8, 16, 32, 64, 128
        self.project = nn.Sequential(nn.Linear(config.z_dim, widths[0] * 16), nn.BatchNorm1d(widths[0] * 16), nn.ReLU())
        layers: list[nn.Module] = []
        if config.upsample not in ("transpose", "nearest"):
            raise ValueError(f"upsample must be transpose or nearest, not {config.upsample!r}")
        for a, b in zip(widths[:-1], widths[1:]):
            if config.upsample == "transpose":
                layers += [nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False)]
            else:  # no checkerboard: every output pixel sees the same number of inputs
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(a, b, 3, 1, 1, bias=False)]
            layers += [nn.BatchNorm2d(b), nn.ReLU()]
        layers += [nn.Conv2d(widths[-1], 3, 3, 1, 1), nn.Tanh()]
        self.body = nn.Sequential(*layers)
        self.widths = widths

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.project(z).view(z.shape[0], self.widths[0], 4, 4)
        return self.body(x)


class Discriminator(nn.Module):
    """Scores a batch: forward returns one (B,) score per scale, the full size first, then (with
    ``low_d``) the pooled pictures'."""

    def __init__(self, config: GanConfig):
        super().__init__()
        c = config.base
        widths = [3, c, 2 * c, 4 * c, 8 * c, 8 * c]  # 128 → 64 → 32 → 16 → 8 → 4
        self.full = _Critic(widths, config.mbstd)
        self.low_d = config.low_d
        self.low = None
        if config.low_d:  # (a power of two from 8: GanConfig checks)
            stages = config.low_d.bit_length() - 3  # x2 stages down to 4x4
            self.low = _Critic([3] + [min(8 * c, 2 * c << k) for k in range(stages)], config.mbstd)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        scores = [self.full(x)]
        if self.low is not None:
            scores.append(self.low(nn.functional.adaptive_avg_pool2d(x, self.low_d)))
        return scores


class _Critic(nn.Module):
    """Spectral-normalised stride-2 convolutions through ``widths`` down to 4x4, then one score."""

    def __init__(self, widths: list[int], mbstd: bool):
        super().__init__()
        sn = nn.utils.spectral_norm
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [sn(nn.Conv2d(a, b, 4, 2, 1)), nn.LeakyReLU(0.2)]
        self.body = nn.Sequential(*layers)
        self.mbstd = mbstd
        self.head = sn(nn.Linear((widths[-1] + int(mbstd)) * 16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        if self.mbstd:
            h = torch.cat([h, minibatch_std(h)], dim=1)
        return self.head(h.flatten(1)).squeeze(1)


def minibatch_std(h: torch.Tensor, group: int = MBSTD_GROUP) -> torch.Tensor:
    """(B, C, H, W) → (B, 1, H, W): for each image, the mean standard deviation of the features over
    its group of ``group`` images (the whole batch where it does not divide by ``group``)."""
    b, _c, hh, ww = h.shape
    g = group if b % group == 0 else b
    y = h.view(g, b // g, -1)  # image i is in group i % (b // g)
    std = torch.sqrt(y.var(dim=0, unbiased=False) + 1e-8).mean(dim=1)  # (b // g,)
    return std.repeat(g).view(b, 1, 1, 1).expand(b, 1, hh, ww)


class GeneratorExport(nn.Module):
    """z (B, z_dim) → image (B, 3, size, size) in 0..1 at the training size."""

    def __init__(self, generator: Generator):
        super().__init__()
        self.generator = generator

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.clamp(self.generator(z) * 0.5 + 0.5, 0.0, 1.0)


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
