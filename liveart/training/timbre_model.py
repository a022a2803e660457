"""The timbre VAE (torch): a note's summary → a latent timbre position; (latent, pitch, velocity,
note time) → a parameter frame.

- The *encoder* reads a note summary: its levels (dB, model scale) at SUMMARY_ON_SECONDS after the
  onset and SUMMARY_OFF_SECONDS after the release, plus its pitch and velocity, and gives the mean
  and log-variance of a diagonal Gaussian over the latent.
- The *decoder* is an MLP from (latent, pitch, velocity, note-time features) to the levels of the
  N_PARAMS synth parameters at that time. It is a function of time, not a recurrent model, so any
  control rate can sample it, every voice is independent, and a batch of voices is one call.

Training crosses notes: the latent of one note of a program reconstructs another note of the same
program (another pitch, velocity and hold) as often as itself, so the latent carries what the
instrument sounds like, not the details of one note; that is what anchors (an instrument's mean
latent) are used for.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..timbre import frames as fr

SUMMARY_ON_SECONDS = (0.0, 0.02, 0.05, 0.1, 0.2)  # all inside the shortest hold
SUMMARY_OFF_SECONDS = (0.03, 0.1, 0.3)
SUMMARY_FRAMES = len(SUMMARY_ON_SECONDS) + len(SUMMARY_OFF_SECONDS)


@dataclass
class TimbreConfig:
    latent: int = 8
    hidden: int = 256
    decoder_layers: int = 2
    encoder_hidden: int = 512

    def to_dict(self) -> dict:
        return asdict(self)


class Encoder(nn.Module):
    def __init__(self, config: TimbreConfig):
        super().__init__()
        h = config.encoder_hidden
        self.net = nn.Sequential(
            nn.Linear(SUMMARY_FRAMES * fr.N_PARAMS + 2, h), nn.SiLU(),
            nn.Linear(h, h // 2), nn.SiLU(),
            nn.Linear(h // 2, 2 * config.latent),
        )

    def forward(self, summary: torch.Tensor, cond: torch.Tensor):
        """summary : (N, SUMMARY_FRAMES, N_PARAMS) model-scale levels; cond : (N, 2) → mu, logvar (N, latent)."""
        out = self.net(torch.cat([summary.flatten(1), cond], dim=1))
        mu, logvar = out.chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 6.0)


class Decoder(nn.Module):
    def __init__(self, config: TimbreConfig):
        super().__init__()
        h = config.hidden
        layers: list[nn.Module] = [nn.Linear(config.latent + 2 + fr.N_TIME_FEATURES, h), nn.SiLU()]
        for _ in range(config.decoder_layers - 1):
            layers += [nn.Linear(h, h), nn.SiLU()]
        layers.append(nn.Linear(h, fr.N_PARAMS))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, cond: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        """z : (V, latent), cond : (V, 2), time : (V, N_TIME_FEATURES) → model-scale levels (V, N_PARAMS)."""
        return self.net(torch.cat([z, cond, time], dim=1))


class TimbreVAE(nn.Module):
    def __init__(self, config: TimbreConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)


class DecoderDb(nn.Module):
    """The exported decoder: levels in dB, floored (what the run time reads)."""

    def __init__(self, decoder: Decoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, z, cond, time):
        y = self.decoder(z, cond, time)
        return torch.clamp((y + 1.0) * fr.LEVEL_SCALE_DB + fr.FLOOR_DB, min=fr.FLOOR_DB, max=0.0)


class DecoderSynth(nn.Module):
    """The exported decoder: from what the engine knows of a voice to the synth's frame, in one graph
    (the same arithmetic as :func:`frames.time_features`, :func:`frames.condition` and
    :func:`frames.synth_frames`), so the run time makes one call per control frame.

    Inputs: z (V, latent); note, velocity, on_seconds, off_seconds (V,) (off_seconds negative while
    the key is held); band_limit_hz (1,): partials at or above it are silent. Outputs: harmonics
    (V, N_HARMONICS) and noise (V, N_NOISE_BANDS) relative to amp (V,), and levels_db (V, N_PARAMS).
    """

    def __init__(self, decoder: Decoder):
        super().__init__()
        self.decoder = decoder
        self.register_buffer("harmonic_numbers", torch.arange(1, fr.N_HARMONICS + 1, dtype=torch.float32))

    @staticmethod
    def _log_time(seconds: torch.Tensor, limit: float) -> torch.Tensor:
        t = torch.clamp(seconds, 0.0, limit)
        return torch.log1p(t / fr.TIME_UNIT_SECONDS) / math.log1p(limit / fr.TIME_UNIT_SECONDS)

    def forward(self, z, note, velocity, on_seconds, off_seconds, band_limit_hz):
        cond = torch.stack([(note - fr.PITCH_CENTRE) / fr.PITCH_SCALE, velocity / 63.5 - 1.0], dim=1)
        up = (off_seconds >= 0).to(z.dtype)
        held = torch.where(up > 0, on_seconds - off_seconds, on_seconds)
        time = torch.stack([self._log_time(on_seconds, fr.MAX_ON_SECONDS), up,
                            up * self._log_time(off_seconds, fr.MAX_OFF_SECONDS),
                            up * self._log_time(held, fr.MAX_ON_SECONDS)], dim=1)
        y = self.decoder(z, cond, time)
        db = torch.clamp((y + 1.0) * fr.LEVEL_SCALE_DB + fr.FLOOR_DB, min=fr.FLOOR_DB, max=0.0)
        # exp rather than pow: onnxruntime vectorises Exp, not Pow.
        linear = torch.exp(db * (math.log(10.0) / 20.0)) * (db > fr.FLOOR_DB).to(db.dtype)
        f0 = 440.0 * torch.exp((note - 69.0) * (math.log(2.0) / 12.0))
        audible = (f0[:, None] * self.harmonic_numbers[None, :] < band_limit_hz).to(z.dtype)
        h = linear[:, : fr.N_HARMONICS] * audible
        noise = linear[:, fr.N_HARMONICS :]
        amp = torch.sqrt(0.5 * torch.sum(h * h, dim=1) + torch.sum(noise * noise, dim=1))
        inv = torch.where(amp > 0, 1.0 / torch.clamp(amp, min=1e-30), torch.zeros_like(amp))[:, None]
        return h * inv, noise * inv, amp, db


class EncoderDb(nn.Module):
    """The exported encoder: reads a summary in dB (NaN-free: unmeasurable levels at the floor)."""

    def __init__(self, encoder: Encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, summary_db, cond):
        y = (torch.clamp(summary_db, min=fr.FLOOR_DB) - fr.FLOOR_DB) / fr.LEVEL_SCALE_DB - 1.0
        mu, _ = self.encoder(y, cond)
        return mu


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
