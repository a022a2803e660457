"""The voice bank's operations, compiled: start, release, steal, ramp, and the parameter frames and
wavetables a voice plays. They run inside the engine's compiled block (:mod:`liveart.realtime.block`),
on the audio thread, without the GIL, so none of them allocates.

The bank's state is a :class:`Voices` named tuple of the :class:`~liveart.synth.bank.VoiceBank`'s
arrays (one row per slot); the same arrays the kernel renders from. Presets are rows of
:data:`PRESET_FIELDS` in a float64 array plus their harmonics, made by :func:`preset_arrays`.
"""

from __future__ import annotations

import math
from collections import namedtuple

import numba
import numpy as np

from .presets import (BRIGHTNESS_TILT_RANGE, N_HARMONICS, NOISE_AMOUNT_RANGE, NOISE_HIGH_HZ, NOISE_LOW_HZ,
                      VELOCITY_CURVE, Preset)

# Kept here (not imported from bank) so that bank can import this module.
TABLE_SIZE = 2048
TAPER_START = 0.40  # partials above TAPER_END of the sample rate are silent, below TAPER_START untouched
TAPER_END = 0.45
ENVELOPE_CURVE = 5.0
EXP_CURVE = math.exp(-ENVELOPE_CURVE)
FAR_FUTURE = np.iinfo(np.int64).max // 4  # "never" for note-off and steal frames

# A preset as a row of floats.
P_ATTACK, P_DECAY, P_SUSTAIN, P_RELEASE, P_GAIN, P_NOISE, P_NOISE_CENTRE, P_NOISE_WIDTH, P_VEL_BRIGHTNESS = range(9)
PRESET_FIELDS = 9

Voices = namedtuple("Voices", (
    "t_on", "t_off", "t_kill", "t_end", "level_off", "attack_frames", "decay_frames", "sustain_level",
    "release_frames", "channel", "note", "velocity", "pedal_held", "f0_hz", "harmonics", "ramp_at", "phase_at",
    "freq_before", "freq_after", "gain_l_before", "gain_l_after", "gain_r_before", "gain_r_after", "table_before",
    "table_after", "noise_before", "noise_after", "amp_before", "amp_after", "noise_offset", "noise_bands",
    "preset", "timbre", "timbre_peak"))

_jit = numba.njit(cache=True, nogil=True, error_model="numpy")


def sine_basis() -> np.ndarray:
    """sin(2 pi k j / TABLE_SIZE) for partials k = 1..N_HARMONICS, shape (N_HARMONICS, TABLE_SIZE), float32:
    a wavetable is the partials' amplitudes times these rows (computed from (k j) mod TABLE_SIZE, exact)."""
    j = np.arange(TABLE_SIZE)
    k = np.arange(1, N_HARMONICS + 1)[:, None]
    return np.sin(2.0 * np.pi * ((k * j) % TABLE_SIZE) / TABLE_SIZE).astype(np.float32)


def preset_arrays(presets: list[Preset]) -> tuple[np.ndarray, np.ndarray]:
    """(fields (P, PRESET_FIELDS) float64, harmonics (P, N_HARMONICS) float64) of presets, in order."""
    fields = np.zeros((len(presets), PRESET_FIELDS))
    harmonics = np.zeros((len(presets), N_HARMONICS))
    for i, p in enumerate(presets):
        fields[i] = (p.attack_seconds, p.decay_seconds, p.sustain_level, p.release_seconds, p.gain, p.noise_level,
                     p.noise_centre_ratio, p.noise_width_octaves, p.velocity_brightness)
        harmonics[i, : len(p.harmonics)] = p.harmonics
    return fields, harmonics


@_jit
def build_table(harmonics, freq, basis, table):
    """Fill ``table`` (TABLE_SIZE + 1, float32) with one cycle of partials ``harmonics`` (linear
    amplitudes) at ``freq`` cycles per frame, partials near Nyquist tapered to nothing; the last
    point repeats the first, for interpolation."""
    n = basis.shape[1]
    for i in range(n):
        table[i] = 0.0
    for k in range(harmonics.shape[0]):
        taper = (TAPER_END - freq * (k + 1)) / (TAPER_END - TAPER_START)
        taper = min(max(taper, 0.0), 1.0)
        a = np.float32(harmonics[k] * taper)
        if a == 0.0:
            continue
        row = basis[k]
        for i in range(n):
            table[i] += a * row[i]
    table[n] = table[0]


@_jit
def preset_frame(fields, base, f0_hz, velocity, brightness, noise_amount, centres, harmonics, noise):
    """One preset's parameter frame for a note (see :func:`liveart.synth.presets.frames_for_notes`):
    fills ``harmonics`` (unit sum of squares) and ``noise`` (band RMS); returns the amp."""
    tilt = (brightness - 0.5) * BRIGHTNESS_TILT_RANGE - fields[P_VEL_BRIGHTNESS] * (1.0 - velocity / 127.0)
    energy = 0.0
    for k in range(harmonics.shape[0]):
        h = base[k] * math.exp(tilt * math.log(k + 1.0))
        harmonics[k] = h
        energy += h * h
    norm = math.sqrt(energy)
    if norm > 0.0:
        for k in range(harmonics.shape[0]):
            harmonics[k] /= norm
    centre = min(max(fields[P_NOISE_CENTRE] * f0_hz, NOISE_LOW_HZ), NOISE_HIGH_HZ)
    level = fields[P_NOISE] * NOISE_AMOUNT_RANGE * noise_amount
    dark = 0.5 * min(tilt, 0.0)
    for b in range(noise.shape[0]):
        relative = centres[b] / centre
        x = math.log2(relative) / fields[P_NOISE_WIDTH]
        noise[b] = level * math.exp(-0.5 * x * x) * relative ** dark
    return fields[P_GAIN] * (min(max(velocity, 1.0), 127.0) / 127.0) ** VELOCITY_CURVE


@_jit
def curve(u):
    """1 → 0 exponential-shaped fall over u in [0, 1] that lands exactly on 0 at u = 1."""
    if u >= 1.0:
        return 0.0
    return (math.exp(-ENVELOPE_CURVE * u) - EXP_CURVE) * (1.0 / (1.0 - EXP_CURVE))


@_jit
def adsr_level(v, slot, frame):
    """Envelope level (without the steal fade) of ``slot`` at ``frame``."""
    d = float(frame - v.t_on[slot])
    if d < 0:
        return 0.0
    a = v.attack_frames[slot]
    s = v.sustain_level[slot]
    if d < a:
        level = d / a
    else:
        level = s + (1.0 - s) * curve(min(max((d - a) / v.decay_frames[slot], 0.0), 1.0))
    if frame >= v.t_off[slot]:
        u = min(max((frame - v.t_off[slot]) / v.release_frames[slot], 0.0), 1.0)
        level = v.level_off[slot] * curve(u)
    return level


@_jit
def release_voice(v, slot, frame, steal_fade_frames):
    """Begin ``slot``'s release at ``frame`` (a voice already released is left alone)."""
    if v.t_off[slot] < FAR_FUTURE:
        return
    v.level_off[slot] = adsr_level(v, slot, frame)
    v.t_off[slot] = frame
    v.pedal_held[slot] = False
    # The release replaces whatever end the voice had (its decay's, for a silent sustain); only a
    # steal fade already running can end it sooner.
    end = frame + v.release_frames[slot] + 1
    if v.t_kill[slot] < FAR_FUTURE:
        end = min(end, v.t_kill[slot] + steal_fade_frames + 1)
    v.t_end[slot] = end


@_jit
def kill_voice(v, slot, frame, steal_fade_frames):
    """Fade ``slot`` to silence over the steal fade from ``frame``."""
    if v.t_kill[slot] < FAR_FUTURE:
        return
    v.t_kill[slot] = frame
    v.t_end[slot] = min(v.t_end[slot], frame + steal_fade_frames + 1)


_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xBF58476D1CE4E5B9)
_M3 = np.uint64(0x94D049BB133111EB)
_M4 = np.uint64(0xD6E8FEB86659FD93)


@_jit
def noise_offset(frame, channel, note, loop_frames):
    """A deterministic start in the noise loops for a voice, spread over the whole loop (a 64-bit
    mix of onset frame, channel and note), so that voices' noise is independent even in the lowest
    band, whose samples stay correlated over a few thousand frames."""
    h = np.uint64(frame) * _M1 + np.uint64(channel) * _M2 + np.uint64(note) * _M3
    h ^= h >> np.uint64(31)
    h = h * _M4
    h ^= h >> np.uint64(32)
    return np.int64(h % np.uint64(loop_frames))


@_jit
def start_voice(v, slot, frame, channel, note, velocity, f0_hz, freq, amp, gain_l, gain_r, attack_frames,
                decay_frames, sustain_level, release_frames, hop_frames, basis):
    """Put a new voice in ``slot`` from ``frame``. Its partials must be in ``v.harmonics[slot]`` and its
    noise in ``v.noise_after[slot]``; this builds its wavetable. ``freq`` in cycles per frame."""
    v.t_on[slot] = frame
    v.t_off[slot] = FAR_FUTURE
    v.t_kill[slot] = FAR_FUTURE
    # A voice whose sustain is silent ends with its decay unless released before.
    v.t_end[slot] = frame + attack_frames + decay_frames + 1 if sustain_level <= 0.0 else FAR_FUTURE
    v.attack_frames[slot] = attack_frames
    v.decay_frames[slot] = decay_frames
    v.sustain_level[slot] = sustain_level
    v.release_frames[slot] = release_frames
    v.amp_before[slot] = amp
    v.amp_after[slot] = amp
    v.channel[slot] = channel
    v.note[slot] = note
    v.velocity[slot] = velocity
    v.pedal_held[slot] = False
    v.f0_hz[slot] = f0_hz
    v.noise_offset[slot] = noise_offset(frame, channel, note, v.noise_bands.shape[1])
    v.ramp_at[slot] = frame - hop_frames  # no ramp running
    v.phase_at[slot] = -freq * hop_frames  # so the phase is 0 at the onset
    v.freq_before[slot] = freq
    v.freq_after[slot] = freq
    v.gain_l_before[slot] = gain_l
    v.gain_l_after[slot] = gain_l
    v.gain_r_before[slot] = gain_r
    v.gain_r_after[slot] = gain_r
    build_table(v.harmonics[slot], freq, basis, v.table_after[slot])
    v.table_before[slot, :] = v.table_after[slot]
    v.noise_before[slot, :] = v.noise_after[slot]


@_jit
def ramp_weight(v, slot, frame, hop_frames):
    return min(max((frame - v.ramp_at[slot]) / hop_frames, 0.0), 1.0)


@_jit
def begin_ramp(v, slot, frame, freq, gain_l, gain_r, amp, hop_frames):
    """Start a one-hop ramp of ``slot`` at ``frame`` (a hop boundary) towards new values; the values
    at ``frame`` under the old ramp become the starting ones, so nothing jumps. ``amp`` < 0 keeps the
    loudness. A caller with a new wavetable or noise writes it into ``table_after``/``noise_after``
    after this: at a hop boundary the old ramp is either untouched (w = 0: a second change at the
    same boundary, where the starting table stays and only the target moves) or complete (w = 1:
    its target becomes the starting table here)."""
    h = float(hop_frames)
    d = float(frame - v.ramp_at[slot])
    w = min(max(d / h, 0.0), 1.0)
    ramp_sum = d * (d - 1.0) / (2.0 * h) if d <= h else (h - 1.0) / 2.0 + (d - h)
    phase = v.phase_at[slot] + v.freq_before[slot] * d + (v.freq_after[slot] - v.freq_before[slot]) * ramp_sum
    v.phase_at[slot] = phase - math.floor(phase)
    v.freq_before[slot] = v.freq_before[slot] + (v.freq_after[slot] - v.freq_before[slot]) * w
    v.gain_l_before[slot] = v.gain_l_before[slot] + (v.gain_l_after[slot] - v.gain_l_before[slot]) * w
    v.gain_r_before[slot] = v.gain_r_before[slot] + (v.gain_r_after[slot] - v.gain_r_before[slot]) * w
    v.amp_before[slot] = v.amp_before[slot] + (v.amp_after[slot] - v.amp_before[slot]) * w
    if w >= 1.0:
        v.table_before[slot, :] = v.table_after[slot]
        v.noise_before[slot, :] = v.noise_after[slot]
    v.freq_after[slot] = freq
    v.gain_l_after[slot] = gain_l
    v.gain_r_after[slot] = gain_r
    if amp >= 0.0:
        v.amp_after[slot] = amp
    v.ramp_at[slot] = frame
