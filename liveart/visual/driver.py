"""The music → image-latent driver: a causal, deterministic map from what the engine played to the
generator's latent, one vector per video frame.

    driver = Driver(DriverSettings(), z_dim=128, seed=0)
    driver.onset(time_seconds=0.5, note=60, velocity=100)   # from MusicalState.onsets
    driver.level(time_seconds=0.5, rms=0.05)                 # from MusicalState.rms
    driver.timbre(time_seconds=0.5, position=positions[0])   # from MusicalState.timbre_positions
    z = driver.frame(time_seconds=1 / 30)                    # shape (z_dim,), float32

Everything is a function of the observations so far and the seed (no wall clock, no look-ahead):

- a *home* point and slow *drift* (a few seeded sinusoids of time) keep the picture alive;
- *pitch classes* choose directions: each onset adds its velocity to a decaying 12-bin chroma, and
  the chroma, normalised, weights 12 seeded unit directions;
- *pulse*: each onset kicks an exponentially decaying pulse by velocity/127, along the direction of
  the onset's pitch class, so a note visibly lands;
- *contour* and *loudness*: the recent mean pitch against its long-run mean, and the loudness in
  dB, each divided by its running (exponential) standard deviation, move along two more directions;
- *timbre*: the place in the timbre space, through a fixed seeded projection, picks a region: the
  same sound looks the same.

The sum is smoothed per frame (a one-pole filter in time), so the picture moves, never jumps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DRIFT_COMPONENTS = 3
CHROMA_SECONDS = 1.5  # time constant of the pitch-class memory
CONTOUR_FAST_SECONDS = 0.6
CONTOUR_SLOW_SECONDS = 8.0
LEVEL_SECONDS = 0.3
NORM_SECONDS = 20.0  # running normalisation: mean and variance over about this long
FLOOR_DB = -80.0


@dataclass(frozen=True)
class DriverSettings:
    """Weights of each musical influence (in units of the latent's standard deviation) and times."""

    pulse: float = 0.8
    pulse_seconds: float = 0.18
    chroma: float = 0.9
    contour: float = 0.5
    loudness: float = 0.5
    timbre: float = 0.6
    drift: float = 0.7
    drift_hz: float = 0.05
    smoothing_seconds: float = 0.08


class _Running:
    """Exponential running mean and variance (causal normalisation)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.mean = 0.0
        self.var = 1.0
        self.count = 0

    def update(self, x: float, dt: float) -> float:
        """Add x (observed dt seconds after the previous one); return it normalised."""
        if self.count == 0:
            self.mean, self.var = x, 1.0
        else:
            a = 1.0 - math.exp(-max(dt, 1e-3) / self.seconds)
            delta = x - self.mean
            self.mean += a * delta
            self.var = (1 - a) * (self.var + a * delta * delta)
        self.count += 1
        return (x - self.mean) / math.sqrt(self.var + 1e-6) if self.count > 1 else 0.0


class Driver:
    def __init__(self, settings: DriverSettings, z_dim: int, seed: int = 0, timbre_dim: int = 8):
        self.settings = settings
        self.z_dim = z_dim
        rng = np.random.default_rng(seed)

        def unit(n):
            v = rng.standard_normal((n, z_dim))
            return v / np.linalg.norm(v, axis=1, keepdims=True) * math.sqrt(z_dim)

        self.home = rng.standard_normal(z_dim)
        self.pitch_dirs = unit(12)
        self.contour_dir, self.loud_dir = unit(2)
        self.drift_dirs = unit(DRIFT_COMPONENTS)
        self.drift_phase = rng.uniform(0, 2 * math.pi, DRIFT_COMPONENTS)
        self.drift_rate = settings.drift_hz * rng.uniform(0.6, 1.4, DRIFT_COMPONENTS)
        self.timbre_proj = rng.standard_normal((timbre_dim, z_dim)) / math.sqrt(timbre_dim)
        self.time = 0.0
        self.chroma = np.zeros(12)
        self.pulse = np.zeros(z_dim)
        self.fast_pitch = None
        self.slow_pitch = None
        self.contour_norm = _Running(NORM_SECONDS)
        self.level_norm = _Running(NORM_SECONDS)
        self.contour_value = 0.0
        self.level_value = 0.0
        self.level_db = FLOOR_DB
        self.last_level_time = 0.0
        self.last_contour_time = 0.0
        self.timbre_offset = np.zeros(z_dim)
        self.z = None

    # ------------------------------------------------------------------ observations (in time order)
    def _advance(self, t: float) -> None:
        dt = t - self.time
        if dt < -1e-9:
            raise ValueError(f"observations must come in time order: {t:.6f} s after {self.time:.6f} s")
        if dt > 0:
            self.chroma *= math.exp(-dt / CHROMA_SECONDS)
            self.pulse *= math.exp(-dt / self.settings.pulse_seconds)
            self.time = t

    def onset(self, time_seconds: float, note: int, velocity: int) -> None:
        self._advance(time_seconds)
        v = velocity / 127.0
        pc = int(note) % 12
        self.chroma[pc] += v
        self.pulse += v * self.pitch_dirs[pc]
        for name, seconds in (("fast_pitch", CONTOUR_FAST_SECONDS), ("slow_pitch", CONTOUR_SLOW_SECONDS)):
            old = getattr(self, name)
            a = 1.0 - math.exp(-max(time_seconds - self.last_contour_time, 0.05) / seconds)
            setattr(self, name, float(note) if old is None else old + a * (note - old))
        self.contour_value = self.contour_norm.update(self.fast_pitch - self.slow_pitch,
                                                      time_seconds - self.last_contour_time)
        self.last_contour_time = time_seconds

    def level(self, time_seconds: float, rms: float) -> None:
        self._advance(time_seconds)
        db = 20.0 * math.log10(rms) if rms > 10 ** (FLOOR_DB / 20) else FLOOR_DB
        if self.level_norm.count == 0:
            self.level_db = db  # start where the music starts, not at the floor
        a = 1.0 - math.exp(-max(time_seconds - self.last_level_time, 1e-3) / LEVEL_SECONDS)
        self.level_db += a * (db - self.level_db)
        self.level_value = self.level_norm.update(self.level_db, time_seconds - self.last_level_time)
        self.last_level_time = time_seconds

    def timbre(self, time_seconds: float, position) -> None:
        self._advance(time_seconds)
        self.timbre_offset = np.asarray(position, np.float64) @ self.timbre_proj

    # ------------------------------------------------------------------ the latent
    def frame(self, time_seconds: float) -> np.ndarray:
        """The latent for a video frame at ``time_seconds`` (after every observation up to then)."""
        self._advance(time_seconds)
        s = self.settings
        t = time_seconds
        drift = np.sin(2 * math.pi * self.drift_rate * t + self.drift_phase) @ self.drift_dirs / math.sqrt(DRIFT_COMPONENTS)
        total = self.chroma.sum()
        chroma = (self.chroma / total) @ self.pitch_dirs if total > 1e-6 else np.zeros(self.z_dim)
        target = (self.home + s.drift * drift + s.chroma * chroma * min(1.0, total)
                  + s.pulse * self.pulse + s.contour * np.tanh(self.contour_value) * self.contour_dir
                  + s.loudness * np.tanh(self.level_value) * self.loud_dir + s.timbre * self.timbre_offset)
        if self.z is None or s.smoothing_seconds <= 0:
            self.z = target
        else:
            dt = max(t - getattr(self, "_last_frame", t), 0.0)
            self.z = self.z + (target - self.z) * (1.0 - math.exp(-dt / s.smoothing_seconds))
        self._last_frame = t
        return self.z.astype(np.float32)
