"""The compiled segment renderer: the voice bank's closed forms in one pass per voice, without the GIL.

Same mathematics as :meth:`VoiceBank.render_numpy` (the reference it is tested against), computed
sample by sample in float64 with numba: no temporaries, so it is several times faster than the
numpy version (see docs/benchmarks.md), and it is called from the engine's compiled block
(:mod:`liveart.realtime.block`), which runs on the audio thread without the GIL. Each sample is a
closed form of its absolute frame and the voices are summed in slot order, so any split of time into
segments gives bit-identical audio.

Compiled on first use and cached beside this file (``__pycache__``).
"""

from __future__ import annotations

import math

import numba


def _fall_span(env, j0, j1, t0, base, scale, step, curve_k, curve_floor, anchor_mask, level, floor):
    """env[j] = floor + level * fall(t) for j in [j0, j1), t = t0 + j, fall going 1 → 0 over ``scale`` frames
    from ``base``. exp() is evaluated on absolute multiples of the anchor and stepped by one multiply
    a frame in between, so every split of time computes the same product chain."""
    norm = 1.0 / (1.0 - curve_floor)
    j = j0
    while j < j1:
        t = t0 + j
        anchor = t - (t & anchor_mask)
        chain = math.exp(-curve_k * ((anchor - base) / scale))
        for _ in range(t - anchor):
            chain *= step
        stop = min(j1, j + (anchor + anchor_mask + 1 - t))
        while j < stop:
            fall = (chain - curve_floor) * norm
            env[j] = floor + level * (fall if fall > 0.0 else 0.0)
            chain *= step
            j += 1


def _noise_span(buf, weights, v, noise_bands, t0, j0, j1):
    """buf[j] = sum over bands b (in order) of weights[v, b] * noise_bands[b, (t0 + j) mod loop], j in [j0, j1).

    Band-major loops over contiguous 1-D slices, which the compiler vectorises; the loop length is
    a power of two, so a span wraps at most once and is split there.
    """
    loop = noise_bands.shape[1]
    for j in range(j0, j1):
        buf[j] = 0.0
    j = j0
    while j < j1:
        start = (t0 + j) & (loop - 1)
        count = min(j1 - j, loop - start)
        out = buf[j : j + count]
        for b in range(noise_bands.shape[0]):
            wb = weights[v, b]
            if wb != 0.0:
                src = noise_bands[b, start : start + count]
                for k in range(count):
                    out[k] += wb * src[k]
        j += count


def _render_segment(t0, n, act, t_on, t_off, t_kill, level_off, attack_frames, decay_frames, sustain_level,
                    release_frames, amp_before, amp_after, ramp_at, phase_at, freq_before, freq_after,
                    gain_l_before, gain_l_after, gain_r_before, gain_r_after, table_before, table_after,
                    noise_before, noise_after, noise_offset, noise_bands, hop_frames, steal_fade_frames, curve_k,
                    curve_floor, anchor_frames, env, noise_now, noise_then, out_l, out_r):
    """Add voices ``act`` over frames t0 .. t0+n-1 into out_l/out_r (float64, length n).

    Arguments are the VoiceBank's arrays of the same names. noise_bands : shape (bands,
    NOISE_LOOP_FRAMES), float32; voice v reads it from frame t + noise_offset[v]. Scratch, shape (>= n,): env float64; noise_now, noise_then float32
    (a voice's noise with its current and its previous band weights).
    """
    table_size = table_after.shape[1] - 1
    anchor_mask = anchor_frames - 1
    hop = float(hop_frames)
    inv_hop = 1.0 / hop
    inv_2hop = 0.5 / hop
    inv_fade = 1.0 / steal_fade_frames
    t_end = t0 + n
    for vi in range(act.shape[0]):
        v = act[vi]
        on = t_on[v]
        off = t_off[v]
        a = attack_frames[v]
        dcy = decay_frames[v]
        s = sustain_level[v]
        rel = release_frames[v]
        # Envelope, stage by stage: attack, decay, sustain, release, silence.
        before_release = min(off, t_end)
        att_end = on + a
        dec_end = att_end + dcy
        rel_end = off + rel if off < t_end else t_end
        j_first = max(on, t0) - t0
        j_last = min(rel_end, t_end) - t0
        kill = t_kill[v]
        if kill < t_end:
            j_last = min(j_last, kill + steal_fade_frames - t0)
        if j_last <= j_first:
            continue
        inv_a = 1.0 / a
        for j in range(j_first, min(att_end, before_release) - t0):
            env[j] = (t0 + j - on) * inv_a
        j0 = max(att_end, t0) - t0
        j1 = min(dec_end, before_release) - t0
        if j1 > j0:
            _fall_span(env, j0, j1, t0, att_end, float(dcy), math.exp(-curve_k / dcy), curve_k, curve_floor,
                       anchor_mask, 1.0 - s, s)
        for j in range(max(dec_end, t0) - t0, before_release - t0):
            env[j] = s
        if off < t_end:
            j0 = max(off, t0) - t0
            j1 = min(rel_end, t_end) - t0
            if j1 > j0:
                _fall_span(env, j0, j1, t0, off, float(rel), math.exp(-curve_k / rel), curve_k, curve_floor,
                           anchor_mask, level_off[v], 0.0)
        if kill < t_end:
            for j in range(max(kill, t0) - t0, j_last):
                k = 1.0 - (t0 + j - kill) * inv_fade
                env[j] *= k if k > 0.0 else 0.0

        r_at = ramp_at[v]
        noise_t0 = t0 + noise_offset[v]
        _noise_span(noise_now, noise_after, v, noise_bands, noise_t0, j_first, j_last)
        ramp_last = min(j_last, r_at + hop_frames + 1 - t0)  # frames before this one are inside the ramp (d <= hop)
        if ramp_last > j_first:
            _noise_span(noise_then, noise_before, v, noise_bands, noise_t0, j_first, ramp_last)
        amp_b = amp_before[v]
        amp_a = amp_after[v]
        ph0 = phase_at[v]
        fb = freq_before[v]
        fstep = freq_after[v] - fb
        glb = gain_l_before[v]
        gla = gain_l_after[v]
        grb = gain_r_before[v]
        gra = gain_r_after[v]
        tab_now = table_after[v]
        tab_then = table_before[v]
        # Frames inside the control ramp: cross-fade tables, noise and gains.
        for j in range(j_first, max(j_first, ramp_last)):
            d = float(t0 + j - r_at)
            w = d * inv_hop
            # Oscillator phase: exact sum of the one-hop frequency ramp.
            phase = ph0 + fb * d + fstep * (d * (d - 1.0) * inv_2hop)
            phase -= math.floor(phase)
            pos = phase * table_size
            i = min(int(pos), table_size - 1)
            frac = pos - i
            lo = tab_now[i]
            y = lo + (tab_now[i + 1] - lo) * frac + noise_now[j]
            lo = tab_then[i]
            yb = lo + (tab_then[i + 1] - lo) * frac + noise_then[j]
            sample = env[j] * (amp_b + (amp_a - amp_b) * w) * (yb + (y - yb) * w)
            out_l[j] += (glb + (gla - glb) * w) * sample
            out_r[j] += (grb + (gra - grb) * w) * sample
        # Frames after it: one table, fixed gains; the ramp sum is (hop - 1) / 2 + (d - hop).
        for j in range(max(j_first, ramp_last), j_last):
            d = float(t0 + j - r_at)
            phase = ph0 + fb * d + fstep * ((hop - 1.0) / 2.0 + (d - hop))
            phase -= math.floor(phase)
            pos = phase * table_size
            i = min(int(pos), table_size - 1)
            frac = pos - i
            lo = tab_now[i]
            sample = env[j] * amp_a * (lo + (tab_now[i + 1] - lo) * frac + noise_now[j])
            out_l[j] += gla * sample
            out_r[j] += gra * sample

def _finish_block(left, right, gain, out):
    """out[:, 0] = gain * left, out[:, 1] = gain * right (float32); returns (peak, sum of squares)."""
    peak = 0.0
    energy = 0.0
    for j in range(left.shape[0]):
        a = left[j] * gain
        b = right[j] * gain
        out[j, 0] = a
        out[j, 1] = b
        energy += a * a + b * b
        a = abs(a)
        b = abs(b)
        if a > peak:
            peak = a
        if b > peak:
            peak = b
    return peak, energy


_jit = numba.njit(nogil=True, cache=True, fastmath=False, error_model="numpy")
_fall_span = _jit(_fall_span)
_noise_span = _jit(_noise_span)
render_segment = _jit(_render_segment)
finish_block = _jit(_finish_block)
