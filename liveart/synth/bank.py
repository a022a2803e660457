"""The voice bank: a polyphonic harmonic-plus-filtered-noise oscillator, vectorised over voices.

Every quantity a voice plays is a *closed-form function of the absolute frame*, so a segment of
audio can be computed in one piece for any split of time into blocks, and two splits give the
same samples (the engine's block-size invariance rests on this):

- the envelope (linear attack, exponential-shaped decay and release that reach their targets
  exactly, a linear fade when a voice is stolen) is a function of frames since note-on/off;
- control-rate parameters (frequency, pan gains, wavetable, noise band magnitudes) change only at
  control-hop boundaries and then ramp linearly over exactly one hop, from ``*_before`` to
  ``*_after``; the oscillator phase is the exact sum of the ramped frequency, anchored at the
  ramp's start.

Harmonics are played from a band-limited single-cycle wavetable per voice (built by an inverse
FFT of the partial amplitudes, partials near Nyquist tapered to zero), read with linear
interpolation; while a control ramp runs, the voice cross-fades from the old table to the new one.
Noise is shared band-limited noise loops (one per band, periodic by construction), weighted per
voice and band.
"""

from __future__ import annotations

import numpy as np

from . import kernel
from .presets import N_HARMONICS, N_NOISE_BANDS, noise_band_edges_hz
from .voices import ENVELOPE_CURVE, EXP_CURVE, FAR_FUTURE, TABLE_SIZE, TAPER_END, TAPER_START, Voices, sine_basis

NOISE_LOOP_FRAMES = 1 << 17
_EXP_CURVE = EXP_CURVE
STEAL_FADE_SECONDS = 0.004  # a stolen voice fades out over this long: no click, little overlap
# The compiled kernel steps exponential envelope segments by multiplication, re-anchored with exp()
# on multiples of this many frames.
ENVELOPE_ANCHOR = 64
_BASIS = sine_basis()


def _curve(u: np.ndarray) -> np.ndarray:
    """1 → 0 exponential-shaped fall over u in [0, 1] that lands exactly on 0 at u = 1."""
    fall = (np.exp(-ENVELOPE_CURVE * u) - _EXP_CURVE) * (1.0 / (1.0 - _EXP_CURVE))
    return np.where(u >= 1.0, 0.0, fall).astype(fall.dtype, copy=False)


_HARMONIC_NUMBERS = np.arange(1, N_HARMONICS + 1, dtype=np.float64)
_TABLE_SCALE = -0.5j * TABLE_SIZE


def build_tables(harmonics: np.ndarray, freq: np.ndarray) -> np.ndarray:
    """Wavetables for partial amplitudes at frequencies, many at once by inverse FFT (the timbre
    worker's, off the audio thread; the block builds a single table with the compiled
    :func:`~liveart.synth.voices.build_table`, the same table to float32 rounding).

    harmonics : shape (V, N_HARMONICS) linear amplitude; freq : shape (V,) cycles per frame.
    Returns shape (V, TABLE_SIZE + 1) float32 (the last point repeats the first, for lookup).
    """
    partial_freq = np.asarray(freq, np.float64)[:, None] * _HARMONIC_NUMBERS[None, :]
    taper = np.clip((TAPER_END - partial_freq) / (TAPER_END - TAPER_START), 0.0, 1.0)
    # Single precision is plenty for a float32 table and makes the FFT ~40% cheaper.
    spectrum = np.zeros((len(partial_freq), TABLE_SIZE // 2 + 1), np.complex64)
    spectrum[:, 1 : N_HARMONICS + 1] = _TABLE_SCALE * harmonics * taper
    table = np.empty((len(partial_freq), TABLE_SIZE + 1), np.float32)
    table[:, :TABLE_SIZE] = np.fft.irfft(spectrum, n=TABLE_SIZE, axis=1)
    table[:, TABLE_SIZE] = table[:, 0]
    return table


def make_noise_bands(sample_rate: int, seed: int) -> np.ndarray:
    """Band-limited noise loops, shape (N_NOISE_BANDS, NOISE_LOOP_FRAMES), float32, unit RMS each.

    Made by masking the spectrum of one seeded white-noise loop, so every band is periodic with the
    loop length (no seam) and bands do not overlap.
    """
    rng = np.random.default_rng(seed)
    spectrum = np.fft.rfft(rng.standard_normal(NOISE_LOOP_FRAMES))
    freqs = np.fft.rfftfreq(NOISE_LOOP_FRAMES, 1.0 / sample_rate)
    edges = noise_band_edges_hz(sample_rate)
    bands = np.empty((N_NOISE_BANDS, NOISE_LOOP_FRAMES), dtype=np.float32)
    for b in range(N_NOISE_BANDS):
        mask = (freqs >= edges[b]) & (freqs < edges[b + 1])
        x = np.fft.irfft(np.where(mask, spectrum, 0), n=NOISE_LOOP_FRAMES)
        bands[b] = x / (np.sqrt(np.mean(x * x)) or 1.0)
    return bands


class VoiceBank:
    """State of ``capacity`` voice slots, and the segment renderers.

    The engine's compiled block decides which slot plays what and renders through the kernel; this
    class holds the arrays (:attr:`voices` names them all, for compiled code) and keeps the numpy
    reference renderer the kernel is tested against. Frames are absolute (int64); ``hop_frames`` is
    the control hop.
    """

    def __init__(self, sample_rate: int, capacity: int, hop_frames: int, seed: int = 0):
        self.sample_rate = sample_rate
        self.capacity = capacity
        self.hop_frames = hop_frames
        self.steal_fade_frames = max(16, int(round(STEAL_FADE_SECONDS * sample_rate)))
        c = capacity
        i64 = np.int64
        # Envelope.
        self.t_on = np.zeros(c, i64)
        self.t_off = np.full(c, FAR_FUTURE, i64)
        self.t_kill = np.full(c, FAR_FUTURE, i64)
        self.t_end = np.zeros(c, i64)  # first frame at which the slot is silent for good
        self.level_off = np.zeros(c)
        self.attack_frames = np.ones(c, i64)
        self.decay_frames = np.ones(c, i64)
        self.sustain_level = np.ones(c)
        self.release_frames = np.ones(c, i64)
        # Who plays.
        self.channel = np.zeros(c, i64)
        self.note = np.zeros(c, i64)
        self.velocity = np.zeros(c, i64)
        self.pedal_held = np.zeros(c, np.bool_)
        self.f0_hz = np.ones(c)
        self.harmonics = np.zeros((c, N_HARMONICS))
        self.preset = np.full(c, -1, i64)  # the engine's preset index (-1: a timbre-model voice)
        self.timbre = np.zeros(c, np.bool_)  # plays through the timbre model
        self.timbre_peak = np.zeros(c)  # a timbre voice's loudest level so far (the model's scale)
        # Control ramp: parameters go from *_before to *_after over [ramp_at, ramp_at + hop).
        self.ramp_at = np.full(c, -hop_frames, i64)
        self.phase_at = np.zeros(c)
        self.freq_before = np.zeros(c)  # cycles per frame (Hz / sample rate)
        self.freq_after = np.zeros(c)
        self.gain_l_before = np.zeros(c)
        self.gain_l_after = np.zeros(c)
        self.gain_r_before = np.zeros(c)
        self.gain_r_after = np.zeros(c)
        self.table_before = np.zeros((c, TABLE_SIZE + 1), np.float32)
        self.table_after = np.zeros((c, TABLE_SIZE + 1), np.float32)
        self.noise_before = np.zeros((c, N_NOISE_BANDS), np.float32)
        self.noise_after = np.zeros((c, N_NOISE_BANDS), np.float32)
        self.amp_before = np.zeros(c)  # the voice's loudness (preset gain × velocity), linear
        self.amp_after = np.zeros(c)
        # Where each voice reads the shared noise loops, so that voices' noise is independent.
        self.noise_offset = np.zeros(c, i64)
        self.noise_bands = make_noise_bands(sample_rate, seed)
        self.voices = Voices(**{name: getattr(self, name) for name in Voices._fields})
        self.reserve(8192)

    # ------------------------------------------------------------------ envelopes (reference)
    def _envelope(self, act: np.ndarray, t0: int, n: int, tt: np.ndarray) -> np.ndarray:
        """Envelope of the voices ``act`` over frames tt = t0..t0+n-1, shape (V, n), float32."""
        env = np.empty((len(act), n), np.float32)
        t_on = self.t_on[act]
        a, dcy, s = self.attack_frames[act], self.decay_frames[act], self.sustain_level[act]
        # Rows still in attack or decay inside this segment need the full formula; others sit at S.
        moving = t_on + a + dcy > t0
        env[~moving] = s[~moving, None]
        if np.any(moving):
            rows = np.flatnonzero(moving)
            # float32 frame differences: exact up to 2**24 frames (5.8 min at 48 kHz), a 6e-8
            # relative error beyond; only a note still in its attack or decay takes this branch.
            d = (tt[None, :] - t_on[rows, None]).astype(np.float32)
            ar = a[rows, None].astype(np.float32)
            dr = dcy[rows, None].astype(np.float32)
            sr = s[rows, None].astype(np.float32)
            decay = _curve(np.clip((d - ar) / dr, 0.0, 1.0))
            decay *= 1.0 - sr
            decay += sr
            env[rows] = np.where(d < ar, d / ar, decay)
        t_off = self.t_off[act]
        released = t_off < t0 + n
        if np.any(released):
            rows = np.flatnonzero(released)
            d = (tt[None, :] - t_off[rows, None]).astype(np.float32)
            rel = _curve(np.clip(d / self.release_frames[act[rows], None].astype(np.float32), 0.0, 1.0))
            rel *= self.level_off[act[rows], None].astype(np.float32)
            env[rows] = np.where(d >= 0, rel, env[rows])
        t_kill = self.t_kill[act]
        killed = t_kill < t0 + n
        if np.any(killed):
            rows = np.flatnonzero(killed)
            d = (tt[None, :] - t_kill[rows, None]).astype(np.float32)
            env[rows] *= np.clip(1.0 - d / np.float32(self.steal_fade_frames), 0.0, 1.0)
        return env

    # ------------------------------------------------------------------ control ramps (reference)
    def _ramp_sum(self, d: np.ndarray) -> np.ndarray:
        """Sum of the ramp weight min(j / hop, 1) over j = 0 .. d-1 (d >= 0)."""
        h = float(self.hop_frames)
        return np.where(d <= h, d * (d - 1.0) / (2.0 * h), (h - 1.0) / 2.0 + (d - h))

    # ------------------------------------------------------------------ rendering
    def render(self, t0: int, out_l: np.ndarray, out_r: np.ndarray) -> None:
        """Add the sound of every slot over frames t0 .. t0 + len(out_l) - 1 into out_l, out_r.

        out_l, out_r : float64 arrays of the segment's length. No control event may fall strictly
        inside the segment (the engine splits at them).
        """
        act = np.flatnonzero(self.t_end > t0)
        if len(act) == 0:
            return
        env, noise_now, noise_then = self._scratch
        kernel.render_segment(
            t0, len(out_l), act, self.t_on, self.t_off, self.t_kill, self.level_off, self.attack_frames, self.decay_frames,
            self.sustain_level, self.release_frames, self.amp_before, self.amp_after, self.ramp_at, self.phase_at,
            self.freq_before, self.freq_after, self.gain_l_before, self.gain_l_after, self.gain_r_before,
            self.gain_r_after, self.table_before, self.table_after, self.noise_before, self.noise_after,
            self.noise_offset, self.noise_bands,
            self.hop_frames, self.steal_fade_frames, ENVELOPE_CURVE, _EXP_CURVE, ENVELOPE_ANCHOR,
            env, noise_now, noise_then, out_l, out_r)

    def reserve(self, max_segment_frames: int) -> None:
        """Allocate kernel scratch for segments up to ``max_segment_frames`` long, so that rendering
        allocates nothing."""
        n = max(1, max_segment_frames)
        self._scratch = (np.zeros(n), np.zeros(n, np.float32), np.zeros(n, np.float32))

    def render_numpy(self, t0: int, out_l: np.ndarray, out_r: np.ndarray) -> None:
        """The reference renderer in numpy: the same closed forms as the compiled kernel."""
        n = len(out_l)
        act = np.flatnonzero(self.t_end > t0)
        if len(act) == 0:
            return
        tt = np.arange(t0, t0 + n, dtype=np.int64)
        env = self._envelope(act, t0, n, tt)

        ramping = bool(np.any(self.ramp_at[act] + self.hop_frames > t0))
        d = (tt[None, :] - self.ramp_at[act, None]).astype(np.float64)
        phase = self.phase_at[act, None] + self.freq_before[act, None] * d
        freq_step = (self.freq_after[act] - self.freq_before[act])[:, None]
        if ramping:
            phase += freq_step * self._ramp_sum(d)
        else:  # every ramp is over: the ramp sum is d - (hop + 1) / 2
            phase += freq_step * (d - (self.hop_frames + 1) / 2.0)
        # Table position, wrapped into one cycle.
        phase *= TABLE_SIZE
        phase -= np.floor(phase * (1.0 / TABLE_SIZE)) * TABLE_SIZE
        index = phase.astype(np.int64)
        frac = (phase - index).astype(np.float32)
        index += (act * (TABLE_SIZE + 1))[:, None]

        # Each voice reads the noise loops from its own offset: shape (bands, V, n).
        bands = self.noise_bands[:, (tt[None, :] + self.noise_offset[act, None]) % NOISE_LOOP_FRAMES]
        osc = self._lookup(self.table_after, index, frac)
        osc += np.einsum("vb,bvn->vn", self.noise_after[act], bands)
        if ramping:
            w = np.clip(d / self.hop_frames, 0.0, 1.0).astype(np.float32)
            before = self._lookup(self.table_before, index, frac)
            before += np.einsum("vb,bvn->vn", self.noise_before[act], bands)
            osc -= before
            osc *= w
            osc += before
            env *= (self.amp_before[act, None] + (self.amp_after - self.amp_before)[act, None] * w).astype(np.float32)
            osc *= env
            gain_l = self.gain_l_before[act, None] + (self.gain_l_after - self.gain_l_before)[act, None] * w
            gain_r = self.gain_r_before[act, None] + (self.gain_r_after - self.gain_r_before)[act, None] * w
            out_l += np.einsum("vn,vn->n", gain_l, osc)
            out_r += np.einsum("vn,vn->n", gain_r, osc)
        else:
            env *= self.amp_after[act, None].astype(np.float32)
            osc *= env
            out_l += self.gain_l_after[act].astype(np.float32) @ osc
            out_r += self.gain_r_after[act].astype(np.float32) @ osc

    @staticmethod
    def _lookup(tables: np.ndarray, index: np.ndarray, frac: np.ndarray) -> np.ndarray:
        flat = tables.reshape(-1)
        lo = flat[index]
        hi = flat[index + 1]
        hi -= lo
        hi *= frac
        hi += lo
        return hi
