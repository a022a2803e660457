"""The timbre data set: single notes of every General MIDI program rendered by FluidSynth with
FluidR3_GM, analysed into exactly the synth's parameters, split, cached.

Every program 0-127 is rendered (the percussive and sound-effect families too: most are pitched or
noisy sounds the harmonic-plus-noise synth can play; notes that come out silent are dropped). Each
program plays PITCHES x VELOCITIES, each note held for one of HOLD_SECONDS (rotated over pitch and
velocity so every program has every hold) and followed by TAIL_SECONDS of release.

Analysis, per note, at ANALYSIS_RATE_HZ frames (f0 is known from the note number):

- the *shape* from a long Blackman window (at least 8 periods of f0, so partials' main lobes
  stay apart and sidelobes are under -58 dB; 2x zero-padded): each partial's peak amplitude (the
  largest bin within a small search window around k f0, which tolerates inharmonic strings,
  detuned samples and vibrato); noise band RMS from the bins outside every partial's main lobe;
- the *level* from a short window (SHORT_WINDOW_SECONDS), so attacks stay sharp even for low
  notes: the frame is scaled so its power equals the short-window power.

Partials above BAND_LIMIT of the sample rate, and noise bands wholly inside a partial's main lobe,
cannot be measured and are NaN (masked in training).

Splits: notes at the held-out pitches (every 4th pitch) of every program form ``pitch``; all notes
of HELD_OUT_PROGRAMS (one per family for half the families) form ``program``; the rest ``train``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..synth.presets import N_HARMONICS, N_NOISE_BANDS, noise_band_edges_hz
from ..timbre import frames as fr

DATASET_VERSION = 1
SAMPLE_RATE = 48000
PROGRAMS = tuple(range(128))
PITCHES = tuple(range(24, 97, 3))  # C1 .. C7
HELD_OUT_PITCHES = PITCHES[2::4]  # 30, 42, 54, 66, 78, 90
VELOCITIES = (40, 80, 120)
HOLD_SECONDS = (0.25, 0.5, 1.0, 2.0)
TAIL_SECONDS = fr.MAX_OFF_SECONDS
# One program from each of eight families, never trained on: electric piano 2, music box, rock
# organ, fretless bass, string ensemble 2, baritone sax, whistle, polysynth.
HELD_OUT_PROGRAMS = (5, 10, 18, 35, 49, 67, 78, 90)
SPLIT_NAMES = ("train", "pitch", "program")
SHORT_WINDOW_SECONDS = 0.012
SILENT_DB = -70.0  # a note whose loudest frame is below this (dBFS) did not sound: dropped
MIN_WINDOW = 2048
MAX_WINDOW = 16384
PERIODS_PER_WINDOW = 8
ZERO_PAD = 2
LOBE_BINS = 3  # the Blackman window's main lobe is +-3 bins of the unpadded window
SEARCH_RATIO = 0.025  # a partial is looked for within +-2.5% of k f0 ...
SEARCH_MAX_F0 = 0.4  # ... but never further than 0.4 f0
DEFAULT_CACHE = Path(".cache") / f"timbre-dataset-v{DATASET_VERSION}.npz"

GM_FAMILIES = ("piano", "chromatic percussion", "organ", "guitar", "bass", "strings", "ensemble",
               "brass", "reed", "pipe", "synth lead", "synth pad", "synth effects", "ethnic",
               "percussive", "sound effects")


@dataclass
class TimbreDataset:
    levels: np.ndarray  # (frames, N_PARAMS) float16 dB, NaN where unmeasurable
    offsets: np.ndarray  # int64, note i = frames [offsets[i], offsets[i+1])
    program: np.ndarray  # int16 per note
    note: np.ndarray  # int16
    velocity: np.ndarray  # int16
    hold_seconds: np.ndarray  # float32
    split: np.ndarray  # uint8: 0 train, 1 held-out pitch, 2 held-out program

    def __len__(self) -> int:
        return len(self.program)

    def frames(self, i: int) -> np.ndarray:
        return self.levels[self.offsets[i] : self.offsets[i + 1]]

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == SPLIT_NAMES.index(split))


def family(program: int) -> int:
    return int(program) // 8


def hold_for(pitch_index: int, velocity_index: int) -> float:
    return HOLD_SECONDS[(pitch_index + velocity_index) % len(HOLD_SECONDS)]


def split_of(program: int, note: int) -> int:
    if program in HELD_OUT_PROGRAMS:
        return 2
    return 1 if note in HELD_OUT_PITCHES else 0


def note_hz(note: float) -> float:
    return 440.0 * 2.0 ** ((note - 69.0) / 12.0)


def short_power(x: np.ndarray, times: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mean power of x in a short Hann window centred at each of ``times`` (frames)."""
    n = int(SHORT_WINDOW_SECONDS * sample_rate) | 1
    w = np.hanning(n + 2)[1:-1]
    w /= w.sum()
    power = np.convolve(x.astype(np.float64) ** 2, w, mode="full")[n // 2 : n // 2 + len(x)]
    return power[np.minimum(times, len(x) - 1)]


def analyse(x: np.ndarray, f0_hz: float, sample_rate: int = SAMPLE_RATE,
            rate_hz: float = fr.ANALYSIS_RATE_HZ) -> np.ndarray:
    """Parameter frames of one note: shape (T, N_PARAMS), dB, NaN for partials above the band limit.

    x : mono samples, the note-on at frame 0. Frame j describes time j / rate_hz.
    """
    hop = int(round(sample_rate / rate_hz))
    n_frames = len(x) // hop
    window = MIN_WINDOW
    while window < PERIODS_PER_WINDOW * sample_rate / f0_hz and window < MAX_WINDOW:
        window *= 2
    nfft = window * ZERO_PAD
    w = np.blackman(window)
    padded = np.concatenate([np.zeros(window // 2), x.astype(np.float64), np.zeros(window // 2)])
    starts = np.arange(n_frames) * hop
    segments = np.lib.stride_tricks.sliding_window_view(padded, window)[starts]
    spectrum = np.abs(np.fft.rfft(segments * w, n=nfft, axis=1))
    bin_hz = sample_rate / nfft
    n_bins = spectrum.shape[1]

    # Partials: the peak bin within the search window around k f0.
    k = np.arange(1, N_HARMONICS + 1)
    centre = k * f0_hz
    half = np.minimum(np.maximum(SEARCH_RATIO * centre, LOBE_BINS * ZERO_PAD * bin_hz), SEARCH_MAX_F0 * f0_hz)
    measurable = centre < fr.BAND_LIMIT * sample_rate
    amp = np.full((n_frames, N_HARMONICS), np.nan)
    excluded = np.zeros(n_bins, bool)
    mean_spectrum = spectrum.mean(axis=0)
    lobe = LOBE_BINS * ZERO_PAD + 1
    for j in np.flatnonzero(measurable):
        lo = max(1, int(np.floor((centre[j] - half[j]) / bin_hz)))
        hi = min(n_bins - 1, int(np.ceil((centre[j] + half[j]) / bin_hz)))
        amp[:, j] = spectrum[:, lo : hi + 1].max(axis=1)
        peak = lo + int(np.argmax(mean_spectrum[lo : hi + 1]))
        excluded[max(0, peak - lobe) : peak + lobe + 1] = True
    amp *= 2.0 / w.sum()

    # Noise: residual power per band from the bins away from the partials.
    power = spectrum ** 2 * (2.0 / (nfft * np.sum(w * w)))
    freqs = np.arange(n_bins) * bin_hz
    edges = noise_band_edges_hz(sample_rate)
    noise = np.full((n_frames, N_NOISE_BANDS), np.nan)  # a band filled by a partial's lobe: unmeasurable
    for b in range(N_NOISE_BANDS):
        in_band = (freqs >= edges[b]) & (freqs < edges[b + 1])
        free = in_band & ~excluded
        if np.any(free):
            noise[:, b] = np.sqrt(power[:, free].mean(axis=1) * np.count_nonzero(in_band))

    # Level from the short window.
    shape_power = 0.5 * np.nansum(amp * amp, axis=1) + np.nansum(noise * noise, axis=1)
    level_power = short_power(x, starts, sample_rate)
    scale = np.sqrt(np.where(shape_power > 0, level_power / np.where(shape_power > 0, shape_power, 1.0), 0.0))
    levels = np.concatenate([amp, noise], axis=1) * scale[:, None]
    with np.errstate(divide="ignore"):
        db = 20.0 * np.log10(np.maximum(levels, 10.0 ** (fr.FLOOR_DB / 20.0)))
    db[np.isnan(levels)] = np.nan
    return db


def _render_program(args) -> list[tuple]:
    program, soundfont = args
    from .fluid import FluidNotes

    out = []
    with FluidNotes(SAMPLE_RATE, soundfont) as fluid:
        for pi, note in enumerate(PITCHES):
            for vi, velocity in enumerate(VELOCITIES):
                hold = hold_for(pi, vi)
                x = fluid.note(program, note, velocity, hold, TAIL_SECONDS)
                if 20 * np.log10(np.max(np.abs(x)) + 1e-12) < SILENT_DB:
                    continue
                db = analyse(x, note_hz(note))
                out.append((program, note, velocity, hold, db.astype(np.float16)))
    return out


def build(soundfont: str | Path | None = None, workers: int | None = None, progress: bool = True) -> TimbreDataset:
    """Render and analyse every note (a few minutes on two cores)."""
    from multiprocessing import get_context

    from tqdm import tqdm

    from .fluid import find_soundfont

    sf = str(find_soundfont(soundfont))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = workers or min(cores, 8)
    jobs = [(p, sf) for p in PROGRAMS]
    notes = []
    with get_context("spawn").Pool(workers) as pool:
        for result in tqdm(pool.imap(_render_program, jobs), total=len(jobs), desc="timbre data",
                           unit="program", disable=not progress):
            notes.extend(result)
    levels = np.concatenate([n[4] for n in notes])
    offsets = np.concatenate([[0], np.cumsum([len(n[4]) for n in notes])]).astype(np.int64)
    program = np.array([n[0] for n in notes], np.int16)
    note = np.array([n[1] for n in notes], np.int16)
    return TimbreDataset(
        levels=levels, offsets=offsets, program=program, note=note,
        velocity=np.array([n[2] for n in notes], np.int16),
        hold_seconds=np.array([n[3] for n in notes], np.float32),
        split=np.array([split_of(p, n) for p, n in zip(program, note)], np.uint8),
    )


def fingerprint(soundfont: Path) -> str:
    """What the cache was built from: the data set version and the SoundFont's size and name."""
    st = soundfont.stat()
    return hashlib.sha256(f"v{DATASET_VERSION}:{soundfont.name}:{st.st_size}".encode()).hexdigest()[:16]


def load_or_build(cache: str | Path = DEFAULT_CACHE, rebuild: bool = False, soundfont=None,
                  progress: bool = True) -> TimbreDataset:
    from .fluid import find_soundfont

    cache = Path(cache)
    stamp = fingerprint(find_soundfont(soundfont))
    if cache.exists() and not rebuild:
        with np.load(cache, allow_pickle=False) as z:
            if str(z["fingerprint"]) == stamp:
                return TimbreDataset(**{f: z[f] for f in TimbreDataset.__dataclass_fields__})
    data = build(soundfont, progress=progress)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.name + ".tmp.npz")
    np.savez(tmp, fingerprint=np.array(stamp), **{f: getattr(data, f) for f in TimbreDataset.__dataclass_fields__})
    os.replace(tmp, cache)
    return data


def describe(data: TimbreDataset) -> str:
    lines = []
    for s, name in enumerate(SPLIT_NAMES):
        idx = np.flatnonzero(data.split == s)
        frames = int(np.sum(data.offsets[idx + 1] - data.offsets[idx]))
        lines.append(f"{name}: {len(idx)} notes, {len(np.unique(data.program[idx]))} programs, {frames} frames")
    dropped = len(PROGRAMS) * len(PITCHES) * len(VELOCITIES) - len(data)
    lines.append(f"silent notes dropped: {dropped}")
    return "\n".join(lines)
