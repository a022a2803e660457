"""What the timbre model predicts: synthesis-parameter frames, and the note-time features it reads.

A *parameter frame* is exactly what a voice of the synth plays (see :mod:`liveart.synth.bank`), in
absolute terms: the peak amplitude of each of N_HARMONICS partials of f0, and the RMS amplitude of
each of N_NOISE_BANDS noise bands (geometric, 40 Hz to 20 kHz at 48 kHz). The model works on their
levels in dB, floored at FLOOR_DB; :func:`synth_frames` turns decoded levels into the synth's
(harmonics, noise, amp) triple.

*Note time* is what lets an attack differ from a sustain and a release: seconds since the note-on,
whether the key is up, seconds since the note-off (:func:`time_features`). Shared by training and
run time so the two can never disagree.
"""

from __future__ import annotations

import numpy as np

from ..synth.presets import N_HARMONICS, N_NOISE_BANDS

N_PARAMS = N_HARMONICS + N_NOISE_BANDS
FLOOR_DB = -100.0  # levels below this are silence
LEVEL_SCALE_DB = 50.0  # the model's outputs are (dB - FLOOR_DB) / LEVEL_SCALE_DB - 1, about -1..1
BAND_LIMIT = 0.45  # partials above this fraction of the sample rate are silent (the bank's TAPER_END)
ANALYSIS_RATE_HZ = 100.0  # frames per second in the data set
TIME_UNIT_SECONDS = 0.02  # the log time axis: resolution near an onset, range over seconds
MAX_ON_SECONDS = 3.0  # note time beyond what the data covers is held at its last value
MAX_OFF_SECONDS = 1.0
# A voice starts from the model's frame this far into its note, and holds it until the note is that
# old (TimbreModel.frames): the first analysis frames straddle the note's start and are quieter than
# the attack (the piano's frame is 18 dB under its peak at the onset, 12 dB at 5 ms, 6 dB at 10 ms),
# so a voice started from them is heard late, by an amount that varies with its noise. Offline and
# live alike.
ONSET_SECONDS = 0.010
N_TIME_FEATURES = 4
PITCH_CENTRE, PITCH_SCALE = 60.0, 36.0


def _log_time(seconds, limit: float) -> np.ndarray:
    t = np.clip(np.asarray(seconds, np.float64), 0.0, limit)
    return np.log1p(t / TIME_UNIT_SECONDS) / np.log1p(limit / TIME_UNIT_SECONDS)


def time_features(on_seconds, off_seconds) -> np.ndarray:
    """Note-time features, shape (..., N_TIME_FEATURES), float32.

    on_seconds : seconds since the note-on; off_seconds : seconds since the note-off, negative
    while the key is held. Features: log time since the onset, key up (0/1), log time since the
    release, and log time the key was held (how far the note had got when released).
    """
    on = np.asarray(on_seconds, np.float64)
    off = np.asarray(off_seconds, np.float64)
    up = (off >= 0).astype(np.float64)
    held = np.where(up > 0, on - off, on)
    return np.stack([_log_time(on, MAX_ON_SECONDS), up, up * _log_time(off, MAX_OFF_SECONDS),
                     up * _log_time(held, MAX_ON_SECONDS)], axis=-1).astype(np.float32)


def condition(note, velocity) -> np.ndarray:
    """Pitch and velocity inputs, shape (..., 2), float32, about -1..1."""
    note = np.asarray(note, np.float64)
    velocity = np.asarray(velocity, np.float64)
    return np.stack([(note - PITCH_CENTRE) / PITCH_SCALE, velocity / 63.5 - 1.0], axis=-1).astype(np.float32)


def db_to_model(db: np.ndarray) -> np.ndarray:
    return (np.maximum(db, FLOOR_DB) - FLOOR_DB) / LEVEL_SCALE_DB - 1.0


def model_to_db(y: np.ndarray) -> np.ndarray:
    return (y + 1.0) * LEVEL_SCALE_DB + FLOOR_DB


def harmonic_band_mask(f0_hz, sample_rate: int) -> np.ndarray:
    """True where partial k of f0 lies below BAND_LIMIT of the sample rate, shape (..., N_HARMONICS)."""
    k = np.arange(1, N_HARMONICS + 1)
    return np.asarray(f0_hz, np.float64)[..., None] * k < BAND_LIMIT * sample_rate


def synth_frames(levels_db: np.ndarray, f0_hz, sample_rate: int, gain: float = 1.0):
    """Decoded levels → the synth's frame: (harmonics, noise, amp).

    levels_db : shape (V, N_PARAMS), dB. Returns harmonics (V, N_HARMONICS) and noise
    (V, N_NOISE_BANDS) as linear amplitudes relative to ``amp`` (V,), the voice's linear gain times
    ``gain``; everything finite and >= 0, partials above BAND_LIMIT of the sample rate zero, a
    level at the floor exactly zero.
    """
    levels = np.where(np.isfinite(levels_db), levels_db, FLOOR_DB)
    linear = np.where(levels > FLOOR_DB, 10.0 ** (levels / 20.0), 0.0)
    h = linear[:, :N_HARMONICS] * harmonic_band_mask(f0_hz, sample_rate)
    noise = linear[:, N_HARMONICS:]
    # Partials are peak amplitudes (power A^2 / 2), noise bands RMS (power N^2).
    amp = np.sqrt(0.5 * np.sum(h * h, axis=1) + np.sum(noise * noise, axis=1))
    scale = np.where(amp > 0, 1.0 / np.where(amp > 0, amp, 1.0), 0.0)[:, None]
    return h * scale, noise * scale, amp * gain
