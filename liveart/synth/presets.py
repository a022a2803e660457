"""Presets: parametric recipes that turn a note into one synthesis-parameter frame.

A frame is what a voice of the synth plays (see :mod:`liveart.synth.bank`):

- ``harmonics`` : np.ndarray, shape (N_HARMONICS,), linear amplitude of partials 1..N, before the
  Nyquist taper; scaled so that their sum of squares is 1 (so loudness does not depend on the
  number of partials);
- ``noise`` : np.ndarray, shape (N_NOISE_BANDS,), linear RMS amplitude of each noise band, on the
  same scale as the harmonics;
- ``amp`` : float, linear gain of the voice.

The timbre model (a later part of liveart) supplies the same frames from a learned latent space;
the presets are the hand-made source of them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import numpy as np

N_HARMONICS = 64
N_NOISE_BANDS = 16
NOISE_LOW_HZ = 40.0
NOISE_HIGH_HZ = 20000.0

_LOG_HARMONIC_NUMBERS = np.log(np.arange(1, N_HARMONICS + 1, dtype=np.float64))
VELOCITY_CURVE = 1.6  # gain = (velocity / 127) ** VELOCITY_CURVE: soft notes stay audible
NOISE_AMOUNT_RANGE = 2.0  # noise_amount 0..1 scales a preset's noise by 0..2
# Tilt applied per unit of brightness away from the middle (0.5): amplitude *= k ** (tilt).
BRIGHTNESS_TILT_RANGE = 2.0


@functools.lru_cache(maxsize=8)
def noise_band_edges_hz(sample_rate: int) -> np.ndarray:
    """Band edges in Hz, shape (N_NOISE_BANDS + 1,), geometric, below 0.45 of the sample rate."""
    high = min(NOISE_HIGH_HZ, 0.45 * sample_rate)
    edges = np.geomspace(NOISE_LOW_HZ, high, N_NOISE_BANDS + 1)
    edges.flags.writeable = False  # cached: shared by every caller
    return edges


@functools.lru_cache(maxsize=8)
def noise_band_centres_hz(sample_rate: int) -> np.ndarray:
    edges = noise_band_edges_hz(sample_rate)
    centres = np.sqrt(edges[:-1] * edges[1:])
    centres.flags.writeable = False
    return centres


@dataclass(frozen=True)
class Preset:
    """A sound: harmonic recipe, noise recipe and envelope. Times in seconds, levels linear."""

    name: str
    harmonics: tuple[float, ...]
    attack_seconds: float = 0.01
    decay_seconds: float = 0.2
    sustain_level: float = 0.8
    release_seconds: float = 0.2
    gain: float = 1.0
    noise_level: float = 0.0
    noise_centre_ratio: float = 4.0  # centre of the noise hump, as a multiple of the note's f0
    noise_width_octaves: float = 1.5
    velocity_brightness: float = 0.8  # extra darkening tilt for soft notes

    def validate(self) -> list[str]:
        """Return a list of 'key: problem' strings; empty when the preset is usable."""
        problems = []
        if len(self.harmonics) == 0 or len(self.harmonics) > N_HARMONICS:
            problems.append(f"harmonics: {len(self.harmonics)} values; allowed 1 to {N_HARMONICS}")
        elif any((not math.isfinite(h)) or h < 0 for h in self.harmonics) or sum(self.harmonics) <= 0:
            problems.append("harmonics: values must be finite, >= 0 and not all zero")
        for key, low, high in (
            ("attack_seconds", 0.0005, 30.0),
            ("decay_seconds", 0.001, 60.0),
            ("sustain_level", 0.0, 1.0),
            ("release_seconds", 0.002, 30.0),
            ("gain", 0.0, 4.0),
            ("noise_level", 0.0, 4.0),
            ("noise_centre_ratio", 0.1, 64.0),
            ("noise_width_octaves", 0.1, 10.0),
            ("velocity_brightness", 0.0, 4.0),
        ):
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and low <= value <= high):
                problems.append(f"{key}: found {value!r}; allowed a number from {low} to {high}")
        return problems

    def replace(self, **changes) -> "Preset":
        return dataclasses.replace(self, **changes)


def _series(fn) -> tuple[float, ...]:
    return tuple(float(fn(k)) for k in range(1, N_HARMONICS + 1))


BUILTIN_PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        # 1/k: the spectrum of a sawtooth, band-limited by construction.
        Preset("saw_lead", _series(lambda k: 1.0 / k), 0.004, 0.25, 0.7, 0.15, gain=0.9,
               noise_level=0.01, noise_centre_ratio=8.0),
        # Strong fundamental, weak upper partials, breath noise around the 3rd-6th partials, ~17 dB under the tone.
        Preset("soft_flute", _series(lambda k: k ** -2.6 if k > 1 else 1.0), 0.06, 0.15, 0.85, 0.18,
               gain=1.0, noise_level=0.05, noise_centre_ratio=4.0, noise_width_octaves=1.0,
               velocity_brightness=0.6),
        # Drawbars 16', 8', 5 1/3', 4', 2 2/3', 2' on a fundamental an octave below: partials 1,2,3,4,6,8.
        Preset("organ", _series(lambda k: {1: 0.8, 2: 1.0, 3: 0.6, 4: 0.5, 6: 0.35, 8: 0.3}.get(k, 0.0)),
               0.006, 0.05, 1.0, 0.06, gain=0.8, noise_level=0.004, noise_centre_ratio=6.0,
               velocity_brightness=0.0),
        # Soft odd-heavy spectrum, slow envelope, breath noise about 8 dB under the tone (a pad is meant to breathe).
        Preset("breathy_pad", _series(lambda k: (1.0 if k % 2 else 0.5) * k ** -1.6), 0.35, 1.0, 0.8,
               1.2, gain=0.8, noise_level=0.1, noise_centre_ratio=3.0, noise_width_octaves=2.5),
        # Bowed strings: a saw-like spectrum rolled off a little, a bowed attack, bow noise up high.
        Preset("strings", _series(lambda k: k ** -1.15), 0.09, 0.4, 0.85, 0.3, gain=0.85,
               noise_level=0.015, noise_centre_ratio=12.0, noise_width_octaves=1.2, velocity_brightness=1.0),
        # Reeds: odd partials lead (clarinet-like), a little breath.
        Preset("reed", _series(lambda k: (1.0 if k % 2 else 0.3) * k ** -0.9), 0.025, 0.2, 0.9, 0.1, gain=0.8,
               noise_level=0.025, noise_centre_ratio=6.0, noise_width_octaves=1.2, velocity_brightness=1.0),
        # Bright attack that decays to nothing: plucked strings, mallets, bass lines.
        Preset("pluck", _series(lambda k: k ** -1.3 * (1.0 - 0.5 * (k % 5 == 0))), 0.002, 1.4, 0.0, 0.25,
               gain=1.1, noise_level=0.015, noise_centre_ratio=10.0, velocity_brightness=1.2),
        # Mostly noise with a short envelope: percussion (GM channel 10).
        Preset("noise_hit", _series(lambda k: 1.0 if k == 1 else 0.0), 0.001, 0.12, 0.0, 0.08, gain=0.7,
               noise_level=2.5, noise_centre_ratio=12.0, noise_width_octaves=2.0, velocity_brightness=0.3),
    )
}

# General MIDI program families (program // 8) → preset, used when a channel follows program changes.
GM_FAMILY_PRESETS = (
    "pluck",        # 0-7 piano
    "pluck",        # 8-15 chromatic percussion
    "organ",        # 16-23 organ
    "pluck",        # 24-31 guitar
    "pluck",        # 32-39 bass
    "strings",      # 40-47 strings
    "strings",      # 48-55 ensemble
    "saw_lead",     # 56-63 brass
    "reed",         # 64-71 reed
    "soft_flute",   # 72-79 pipe
    "saw_lead",     # 80-87 synth lead
    "breathy_pad",  # 88-95 synth pad
    "breathy_pad",  # 96-103 synth effects
    "pluck",        # 104-111 ethnic
    "noise_hit",    # 112-119 percussive
    "noise_hit",    # 120-127 sound effects
)


def preset_for_program(program: int) -> str:
    return GM_FAMILY_PRESETS[max(0, min(127, program)) // 8]


def frame_for_note(preset: Preset, f0_hz: float, velocity: int, brightness: float, noise_amount: float,
                   sample_rate: int) -> tuple[np.ndarray, np.ndarray, float]:
    """One parameter frame for a note: (harmonics (N_HARMONICS,), noise (N_NOISE_BANDS,), amp).
    See :func:`frames_for_notes`."""
    h, noise, amp = frames_for_notes(preset, np.array([f0_hz]), np.array([velocity]), brightness, noise_amount,
                                     sample_rate)
    return h[0], noise[0], float(amp[0])


def frames_for_notes(preset: Preset, f0_hz: np.ndarray, velocity: np.ndarray, brightness, noise_amount,
                     sample_rate: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parameter frames for V notes of one preset.

    f0_hz : shape (V,), Hz; velocity : shape (V,), 1-127; brightness, noise_amount : scalars or
    shape (V,), 0..1, where 0.5 plays the preset as written. Returns harmonics (V, N_HARMONICS)
    with unit sum of squares, noise (V, N_NOISE_BANDS) band RMS, amp (V,) linear gain.
    """
    velocity = np.asarray(velocity, dtype=np.float64)
    brightness = np.asarray(brightness, dtype=np.float64)
    noise_amount = np.asarray(noise_amount, dtype=np.float64)
    base = np.zeros(N_HARMONICS)
    base[: len(preset.harmonics)] = preset.harmonics
    # Spectral tilt: brightness turns it up or down; soft notes are darker.
    tilt = (brightness - 0.5) * BRIGHTNESS_TILT_RANGE - preset.velocity_brightness * (1.0 - velocity / 127.0)
    h = base[None, :] * np.exp(tilt[:, None] * _LOG_HARMONIC_NUMBERS[None, :])  # base * k ** tilt
    norm = np.sqrt(np.sum(h * h, axis=1, keepdims=True))
    h /= np.where(norm > 0, norm, 1.0)
    centres = noise_band_centres_hz(sample_rate)
    centre = np.clip(preset.noise_centre_ratio * np.asarray(f0_hz, dtype=np.float64), NOISE_LOW_HZ, NOISE_HIGH_HZ)
    relative = centres[None, :] / centre[:, None]
    noise = (preset.noise_level * NOISE_AMOUNT_RANGE * noise_amount)[..., None] * np.exp(
        -0.5 * (np.log2(relative) / preset.noise_width_octaves) ** 2)
    # Darker noise for soft notes too, so velocity colours the whole sound.
    noise *= relative ** (0.5 * np.minimum(tilt, 0.0))[:, None]
    amp = preset.gain * (np.clip(velocity, 1, 127) / 127.0) ** VELOCITY_CURVE
    return h, noise, amp
