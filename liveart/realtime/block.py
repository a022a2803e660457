"""The engine's block, compiled: events in at their frames, voices started, released, stolen and
ramped, the timbre model's frames taken, and the kernel run, in one call that never takes the GIL.

The live host's audio callback (a numba cfunc) and the offline renderer both call :func:`run`, so a
live take replayed offline goes down the same path. Everything it touches is preallocated and passed
as named tuples of arrays:

- ``v`` (:class:`~liveart.synth.voices.Voices`): the voice bank;
- ``cfg`` (:class:`Config`): what the patch fixed (presets, controller map, gains, the timbre
  control's anchors and layout), read only;
- ``ch`` (:class:`Channels`): each MIDI channel's controls;
- ``s`` (:class:`State`): the event queue (a binary heap of (frame, seq, kind, channel, a, b) rows),
  counters, the block's onsets, scratch buffers;
- ``tb`` (:class:`Timbre`): the timbre space's places and glide, and the pools of request, result and
  onset-table slabs shared with the timbre worker through rings (:mod:`liveart.realtime.rings`).

Timing rules (the same for every block size) are the engine's (see :mod:`liveart.engine`).

The timbre worker (a Python thread live, the renderer itself offline) decodes what the block asks
for. At each control hop boundary the block takes the newest decoded frames for it and posts the
voices it expects at the next one; it never waits. Offline, :func:`run` returns right after each post
(``sync``) so the renderer can decode it before the block goes on: the sound of a worker that is
never late, which is what a live take sounds like when its worker kept up.
"""

from __future__ import annotations

import math
from collections import namedtuple

import numba

from .. import events as ev
from ..synth import kernel
from ..synth.voices import (ENVELOPE_CURVE, EXP_CURVE, FAR_FUTURE, P_ATTACK, P_DECAY, P_RELEASE, P_SUSTAIN, TAPER_END,
                            TAPER_START, adsr_level, begin_ramp, build_table, kill_voice, preset_frame, ramp_weight,
                            release_voice, start_voice)
from ..synth.bank import ENVELOPE_ANCHOR
from .atomics import fence, load_acquire, store_release
from .rings import ring_peek, ring_push, ring_release

Config = namedtuple("Config", (
    "sample_rate", "hop_frames", "polyphony", "master_gain", "bend_range", "steal_fade_frames", "presets",
    "preset_harmonics", "family_preset", "cc", "basis", "centres", "timbre_gain", "timbre_attack_frames",
    "timbre_release_frames", "timbre_free_frames", "glide_tau", "points", "place", "place_default", "dims",
    "velocity_layers", "places_refresh_frames"))
Channels = namedtuple("Channels", (
    "preset", "follow_program", "timbre", "sustain", "program", "volume", "pan", "brightness", "noise",
    "expression", "bend", "attack_scale", "release_scale"))
State = namedtuple("State", ("queue", "st", "sf", "onsets", "ramp_flags", "flags_now", "act", "left", "right", "env",
                             "noise_now", "noise_then", "row"))
Timbre = namedtuple("Timbre", (
    "base", "morph_value", "xy_value", "offsets", "targets", "position", "before",
    "req_seq", "req_rows", "req_meta", "req_places",
    "res_h", "res_noise", "res_amp", "res_tables", "res_ids", "res_meta", "res_free_header", "res_free",
    "res_ready_header", "res_ready", "on_h", "on_noise", "on_amp", "on_free_header", "on_free", "on_ready_header",
    "on_ready", "pool_row"))

# State.st: int64 counters and registers.
(S_FRAME, S_CURSOR, S_END, S_SEQ, S_QUEUE, S_QUEUE_FULL, S_EVENTS, S_LATE, S_STOLEN, S_HARD_CUTS, S_PEAK_VOICES,
 S_TIMBRE_FRAMES, S_TIMBRE_LATE, S_TEMPO, S_ONSETS, S_ONSETS_LOST, S_LAST_TICK, S_RAMP_PENDING, S_GLIDE_FRAME,
 S_POSTED, S_APPLIED, S_RESULT, S_ONSET_TABLE, S_PLACES_DIRTY, S_PLACES_POSTED, S_REQUESTS_LOST, S_STOPPED,
 S_SIZE) = range(28)
# State.sf: float64 registers.
F_PEAK, F_RMS, F_SIZE = 0, 1, 2
# Queue rows.
Q_FRAME, Q_SEQ, Q_KIND, Q_CHANNEL, Q_A, Q_B, Q_WIDTH = range(7)
RAMP = -1  # a queue row: a hop boundary at which channels' sounding voices follow their controls
_PITCH, _GAIN, _TIMBRE = 1, 2, 4  # what a ramp must update
# Config.cc rows: controller, channel (-1: every one), parameter, low, high, parameter's low, high.
CC_CONTROL, CC_CHANNEL, CC_PARAM, CC_LOW, CC_HIGH, CC_MIN, CC_MAX = range(7)
PARAM_VOLUME, PARAM_EXPRESSION, PARAM_PAN, PARAM_BRIGHTNESS, PARAM_NOISE, PARAM_ATTACK, PARAM_RELEASE = range(7)
PARAM_NAMES = ("volume", "expression", "pan", "brightness", "noise", "attack", "release")
# Config.place rows: kind, then a morph's (control, start, end) or an XY pad's (x control, y control,
# origin, x anchor, y anchor), programs as anchors (start -1: the channel's own).
PLACE_ANCHOR, PLACE_MORPH, PLACE_XY = 0, 1, 2
# Config.dims rows: controller, channel (-1: every one), dimension, amount in latent units.
# Largest pitch ratio in one control hop: partials stop at TAPER_END of the sample rate, so within
# this ratio no partial of either cross-faded wavetable passes Nyquist during a ramp.
MAX_GLIDE_PER_HOP = 0.5 / TAPER_END
# Request rows: slot, note-on frame, note, velocity, seconds since on, since off (-1 held), cycles
# per frame, then the place (latent).
R_SLOT, R_T_ON, R_NOTE, R_VELOCITY, R_ON, R_OFF, R_FREQ, R_Z = range(8)
# Request and result meta: boundary, voices; a request read by the worker also carries how many
# requests so far asked for onset tables.
M_BOUNDARY, M_COUNT, M_PLACES, M_WIDTH = range(4)
REQ_SEQ, REQ_PLACES = 0, 8  # Timbre.req_seq: the request's sequence count, the onset-table requests
TIMBRE_SILENT_DB = -80.0
TIMBRE_SILENT_RANGE_DB = 60.0
_SILENT = 10.0 ** (TIMBRE_SILENT_DB / 20.0)
_SILENT_RANGE = 10.0 ** (-TIMBRE_SILENT_RANGE_DB / 20.0)
# run()'s return values.
DONE, STOPPED = 0, 1

_jit = numba.njit(cache=True, nogil=True, error_model="numpy")


# ------------------------------------------------------------------------------------ the queue
@_jit
def _less(q, i, j):
    return q[i, Q_FRAME] < q[j, Q_FRAME] or (q[i, Q_FRAME] == q[j, Q_FRAME] and q[i, Q_SEQ] < q[j, Q_SEQ])


@_jit
def _swap(q, i, j):
    for k in range(Q_WIDTH):
        x = q[i, k]
        q[i, k] = q[j, k]
        q[j, k] = x


@_jit
def push(s, frame, kind, channel, a, b):
    """Queue an event (ordered by frame, then by when it was queued); False when the queue is full."""
    q = s.queue
    st = s.st
    n = st[S_QUEUE]
    if n >= q.shape[0]:
        st[S_QUEUE_FULL] += 1
        return False
    q[n, Q_FRAME] = frame
    q[n, Q_SEQ] = st[S_SEQ]
    q[n, Q_KIND] = kind
    q[n, Q_CHANNEL] = channel
    q[n, Q_A] = a
    q[n, Q_B] = b
    st[S_SEQ] += 1
    st[S_QUEUE] = n + 1
    i = n
    while i > 0:
        parent = (i - 1) // 2
        if not _less(q, i, parent):
            break
        _swap(q, i, parent)
        i = parent
    return True


@_jit
def schedule(s, frame, kind, channel, a, b):
    """An event from outside: one for a frame already rendered plays at the next and is counted late."""
    if frame < s.st[S_CURSOR]:
        s.st[S_LATE] += 1
        frame = s.st[S_CURSOR]
    return push(s, frame, kind, channel, a, b)


@_jit
def _pop(s, out):
    q = s.queue
    st = s.st
    n = st[S_QUEUE] - 1
    for k in range(Q_WIDTH):
        out[k] = q[0, k]
    st[S_QUEUE] = n
    if n == 0:
        return
    for k in range(Q_WIDTH):
        q[0, k] = q[n, k]
    i = 0
    while True:
        left = 2 * i + 1
        if left >= n:
            break
        child = left
        if left + 1 < n and _less(q, left + 1, left):
            child = left + 1
        if not _less(q, child, i):
            break
        _swap(q, i, child)
        i = child


@_jit
def _next_frame(s):
    return s.queue[0, Q_FRAME] if s.st[S_QUEUE] > 0 else FAR_FUTURE


# ------------------------------------------------------------------------------------ channels
@_jit
def _gains(ch, c):
    gain = (ch.volume[c] * ch.volume[c]) * (ch.expression[c] * ch.expression[c])
    angle = (ch.pan[c] + 1.0) * (math.pi / 4.0)
    return gain * math.cos(angle), gain * math.sin(angle)


@_jit
def _request_ramp(cfg, s, t, c, flags):
    """Controls act on the channel at once (a note starting now uses them); voices already sounding
    ramp to them from the next control hop boundary, over one hop, all channels together."""
    if s.st[S_RAMP_PENDING] == 0:
        hop = cfg.hop_frames
        boundary = -(-t // hop) * hop
        push(s, boundary, RAMP, 0, 0, 0)
        s.st[S_RAMP_PENDING] = 1
    s.ramp_flags[c] |= flags


@_jit
def _sounding(v, t, slot):
    return v.t_end[slot] > t


@_jit
def _started(v, s, t, c, note, velocity):
    st = s.st
    k = st[S_ONSETS]
    if k < s.onsets.shape[0]:
        s.onsets[k, 0] = t
        s.onsets[k, 1] = c
        s.onsets[k, 2] = note
        s.onsets[k, 3] = velocity
        st[S_ONSETS] = k + 1
    else:
        st[S_ONSETS_LOST] += 1
    held = 0
    for slot in range(v.t_end.shape[0]):
        if v.t_end[slot] > t and v.t_kill[slot] >= FAR_FUTURE:
            held += 1
    if held > st[S_PEAK_VOICES]:
        st[S_PEAK_VOICES] = held


@_jit
def _steal(cfg, v, s, t):
    """Fade out the quietest released voice, or else the oldest held one."""
    victim = -1
    best = 0.0
    for slot in range(v.t_end.shape[0]):
        if v.t_end[slot] > t and v.t_kill[slot] >= FAR_FUTURE and v.t_off[slot] < FAR_FUTURE:
            level = adsr_level(v, slot, t)
            if victim < 0 or level < best:
                victim, best = slot, level
    if victim < 0:
        for slot in range(v.t_end.shape[0]):
            if v.t_end[slot] > t and v.t_kill[slot] >= FAR_FUTURE:
                if victim < 0 or v.t_on[slot] < v.t_on[victim]:
                    victim = slot
    kill_voice(v, victim, t, cfg.steal_fade_frames)
    s.st[S_STOLEN] += 1


@_jit
def _note_on(cfg, v, ch, s, tb, t, c, note, velocity):
    if velocity <= 0:
        _note_off(cfg, v, ch, t, c, note)
        return
    fade = cfg.steal_fade_frames
    # The same key again on the same channel: the old voice releases (no stacked hanging copies).
    sounding = 0
    for slot in range(v.t_end.shape[0]):
        if v.t_end[slot] > t:
            if v.channel[slot] == c and v.note[slot] == note and v.t_off[slot] >= FAR_FUTURE:
                release_voice(v, slot, t, fade)
            if v.t_kill[slot] >= FAR_FUTURE:
                sounding += 1
    if sounding >= cfg.polyphony:
        _steal(cfg, v, s, t)
    slot = -1
    for k in range(v.t_end.shape[0]):  # a free slot, the one silent longest
        if v.t_end[k] <= t and (slot < 0 or v.t_end[k] < v.t_end[slot]):
            slot = k
    if slot < 0:  # every slot busy, even the fading ones: cut the one nearest its end
        slot = 0
        for k in range(1, v.t_end.shape[0]):
            if v.t_end[k] < v.t_end[slot]:
                slot = k
        s.st[S_HARD_CUTS] += 1
    f0 = 440.0 * 2.0 ** ((note - 69.0) / 12.0)
    sr = cfg.sample_rate
    freq = f0 * 2.0 ** (ch.bend[c] / 12.0) / sr
    gain_l, gain_r = _gains(ch, c)
    if ch.timbre[c]:
        # The first frame from the worker's onset table at the channel's place; decoded frames take
        # over from the next boundary.
        table = s.st[S_ONSET_TABLE]
        layer = 0
        for k in range(1, cfg.velocity_layers.shape[0]):
            if abs(cfg.velocity_layers[k] - velocity) < abs(cfg.velocity_layers[layer] - velocity):
                layer = k
        v.harmonics[slot, :] = tb.on_h[table, c, note, layer]
        v.noise_after[slot, :] = tb.on_noise[table, c, note, layer]
        level = float(tb.on_amp[table, c, note, layer])
        start_voice(v, slot, t, c, note, velocity, f0, freq, level * cfg.timbre_gain, gain_l, gain_r,
                    cfg.timbre_attack_frames, 1, 1.0, cfg.timbre_release_frames, cfg.hop_frames, cfg.basis)
        v.preset[slot] = -1
        v.timbre[slot] = True
        v.timbre_peak[slot] = level
    else:
        p = ch.preset[c]
        fields = cfg.presets[p]
        amp = preset_frame(fields, cfg.preset_harmonics[p], f0, velocity, ch.brightness[c], ch.noise[c],
                           cfg.centres, v.harmonics[slot], v.noise_after[slot])
        start_voice(v, slot, t, c, note, velocity, f0, freq, amp, gain_l, gain_r,
                    max(1, round(fields[P_ATTACK] * ch.attack_scale[c] * sr)), max(1, round(fields[P_DECAY] * sr)),
                    fields[P_SUSTAIN], max(1, round(fields[P_RELEASE] * ch.release_scale[c] * sr)),
                    cfg.hop_frames, cfg.basis)
        v.preset[slot] = p
        v.timbre[slot] = False
    _started(v, s, t, c, note, velocity)


@_jit
def _note_off(cfg, v, ch, t, c, note):
    slot = -1
    for k in range(v.t_end.shape[0]):  # the oldest voice holding this key
        if (v.t_end[k] > t and v.channel[k] == c and v.note[k] == note and v.t_off[k] >= FAR_FUTURE
                and not v.pedal_held[k]):
            if slot < 0 or v.t_on[k] < v.t_on[slot]:
                slot = k
    if slot < 0:
        return
    if ch.sustain[c]:
        v.pedal_held[slot] = True
    else:
        release_voice(v, slot, t, cfg.steal_fade_frames)


@_jit
def _release_pedal(cfg, v, t, c):
    for slot in range(v.t_end.shape[0]):
        if v.t_end[slot] > t and v.channel[slot] == c and v.pedal_held[slot]:
            release_voice(v, slot, t, cfg.steal_fade_frames)


@_jit
def _control(cfg, v, ch, s, tb, t, c, control, value):
    fade = cfg.steal_fade_frames
    if control == ev.CC_SUSTAIN:
        down = value >= 64
        if ch.sustain[c] and not down:
            _release_pedal(cfg, v, t, c)
        ch.sustain[c] = down
    elif control == ev.CC_ALL_NOTES_OFF:
        for slot in range(v.t_end.shape[0]):
            if v.t_end[slot] > t and v.channel[slot] == c:
                release_voice(v, slot, t, fade)
    elif control == ev.CC_ALL_SOUND_OFF:
        for slot in range(v.t_end.shape[0]):
            if v.t_end[slot] > t and v.channel[slot] == c:
                kill_voice(v, slot, t, fade)
    elif control == ev.CC_RESET_CONTROLLERS:
        if ch.sustain[c]:
            _release_pedal(cfg, v, t, c)
        ch.sustain[c] = False
        ch.expression[c] = 1.0
        ch.bend[c] = 0.0
        _request_ramp(cfg, s, t, c, _PITCH | _GAIN)
    if ch.timbre[c]:
        _glide_advance(cfg, s, tb, t)
        if control == ev.CC_RESET_CONTROLLERS:
            moved = _timbre_reset(cfg, tb, c)
        else:
            moved = _timbre_control_change(cfg, tb, c, control, value)
        if moved:
            _place_moved(cfg, v, s, tb, t, c)
    for i in range(cfg.cc.shape[0]):
        m = cfg.cc[i]
        if int(m[CC_CONTROL]) != control or (m[CC_CHANNEL] >= 0 and int(m[CC_CHANNEL]) != c):
            continue
        x = m[CC_LOW] + (m[CC_HIGH] - m[CC_LOW]) * (value / 127.0)
        x = min(max(x, m[CC_MIN]), m[CC_MAX])
        param = int(m[CC_PARAM])
        if param == PARAM_ATTACK:
            ch.attack_scale[c] = x
        elif param == PARAM_RELEASE:
            ch.release_scale[c] = x
        else:
            if param == PARAM_VOLUME:
                ch.volume[c] = x
            elif param == PARAM_EXPRESSION:
                ch.expression[c] = x
            elif param == PARAM_PAN:
                ch.pan[c] = x
            elif param == PARAM_BRIGHTNESS:
                ch.brightness[c] = x
            else:
                ch.noise[c] = x
            _request_ramp(cfg, s, t, c, _TIMBRE if param == PARAM_BRIGHTNESS or param == PARAM_NOISE else _GAIN)


@_jit
def _update_voices(cfg, v, ch, s, t):
    """Ramp the sounding voices of the channels with pending flags to their channels' controls from
    ``t`` (a hop boundary)."""
    pending = s.flags_now
    pending[:] = s.ramp_flags
    s.ramp_flags[:] = 0
    s.st[S_RAMP_PENDING] = 0
    sr = cfg.sample_rate
    hop = cfg.hop_frames
    for slot in range(v.t_end.shape[0]):
        c = v.channel[slot]
        f = pending[c]
        if v.t_end[slot] <= t or f == 0:
            continue
        freq = v.f0_hz[slot] * 2.0 ** (ch.bend[c] / 12.0) / sr
        # A voice's pitch moves at most MAX_GLIDE_PER_HOP in one hop: within that, neither of the two
        # wavetables being cross-faded carries a partial past Nyquist. A larger jump glides over
        # several hops (an octave in 7 hops, 19 ms at 48 kHz).
        now = v.freq_before[slot] + (v.freq_after[slot] - v.freq_before[slot]) * ramp_weight(v, slot, t, hop)
        limited = min(max(freq, now / MAX_GLIDE_PER_HOP), now * MAX_GLIDE_PER_HOP)
        if limited != freq:
            _request_ramp(cfg, s, t + 1, c, _PITCH)  # the rest of the way from the next boundary
        freq = limited
        recolour = (f & _TIMBRE) != 0 and not v.timbre[slot]
        # A new pitch needs a new table only where a partial is near Nyquist (the taper moves).
        retune = ((f & _PITCH) != 0 and (f & _TIMBRE) == 0
                  and max(v.freq_after[slot], freq) * v.harmonics.shape[1] > TAPER_START)
        gain_l, gain_r = _gains(ch, c)
        begin_ramp(v, slot, t, freq, gain_l, gain_r, -1.0, hop)
        if recolour:
            p = v.preset[slot]
            preset_frame(cfg.presets[p], cfg.preset_harmonics[p], v.f0_hz[slot], v.velocity[slot], ch.brightness[c],
                         ch.noise[c], cfg.centres, v.harmonics[slot], v.noise_after[slot])
        if recolour or retune:
            build_table(v.harmonics[slot], freq, cfg.basis, v.table_after[slot])


@_jit
def _apply(cfg, v, ch, s, tb, t, e):
    kind = e[Q_KIND]
    c = e[Q_CHANNEL]
    if kind == RAMP:
        _update_voices(cfg, v, ch, s, t)
        return
    s.st[S_EVENTS] += 1
    if kind == ev.NOTE_ON:
        _note_on(cfg, v, ch, s, tb, t, c, e[Q_A], e[Q_B])
    elif kind == ev.NOTE_OFF:
        _note_off(cfg, v, ch, t, c, e[Q_A])
    elif kind == ev.CONTROL_CHANGE:
        _control(cfg, v, ch, s, tb, t, c, e[Q_A], e[Q_B])
    elif kind == ev.PITCH_BEND:
        ch.bend[c] = e[Q_A] / 8192.0 * cfg.bend_range
        _request_ramp(cfg, s, t, c, _PITCH)
    elif kind == ev.PROGRAM_CHANGE:
        ch.program[c] = e[Q_A]
        if ch.timbre[c]:
            _glide_advance(cfg, s, tb, t)
            if ch.follow_program[c] and _timbre_program_change(cfg, tb, c, e[Q_A]):
                _place_moved(cfg, v, s, tb, t, c)
        elif ch.follow_program[c]:
            ch.preset[c] = cfg.family_preset[min(max(e[Q_A], 0), 127) // 8]
    elif kind == ev.TEMPO:
        s.st[S_TEMPO] = e[Q_A]


# ------------------------------------------------------------------------------------ timbre places
@_jit
def _update_place(cfg, tb, c):
    place = cfg.place[c]
    kind = place[0]
    target = tb.targets[c]
    if kind == PLACE_MORPH:
        b = cfg.points[place[3]]
        w = tb.morph_value[c]
        for k in range(target.shape[0]):
            a = tb.base[c, k] if place[2] < 0 else cfg.points[place[2], k]
            target[k] = a + (b[k] - a) * w + tb.offsets[c, k]
    elif kind == PLACE_XY:
        o = cfg.points[place[3]]
        px = cfg.points[place[4]]
        py = cfg.points[place[5]]
        x = tb.xy_value[c, 0]
        y = tb.xy_value[c, 1]
        for k in range(target.shape[0]):
            target[k] = o[k] + x * (px[k] - o[k]) + y * (py[k] - o[k]) + tb.offsets[c, k]
    else:
        for k in range(target.shape[0]):
            target[k] = tb.base[c, k] + tb.offsets[c, k]


@_jit
def _moved_update(cfg, tb, c):
    """Recompute channel c's target; True when it moved."""
    before = tb.before[c]
    before[:] = tb.targets[c]
    _update_place(cfg, tb, c)
    for k in range(before.shape[0]):
        if before[k] != tb.targets[c, k]:
            return True
    return False


@_jit
def _timbre_reset(cfg, tb, c):
    """Reset all controllers (CC 121): morph and XY back to their defaults, dimension knobs to none."""
    kind = cfg.place[c, 0]
    tb.morph_value[c] = cfg.place_default[c, 0] if kind == PLACE_MORPH else 0.0
    tb.xy_value[c, 0] = cfg.place_default[c, 0] if kind == PLACE_XY else 0.0
    tb.xy_value[c, 1] = cfg.place_default[c, 1] if kind == PLACE_XY else 0.0
    tb.offsets[c, :] = 0.0
    return _moved_update(cfg, tb, c)


@_jit
def _timbre_program_change(cfg, tb, c, program):
    """Move a following channel's anchor; True when its target moved."""
    tb.base[c, :] = cfg.points[min(max(program, 0), 127)]
    return _moved_update(cfg, tb, c)


@_jit
def _timbre_control_change(cfg, tb, c, control, value):
    """Apply a controller to a timbre channel's place; True when its target moved."""
    x = value / 127.0
    changed = False
    place = cfg.place[c]
    if place[0] == PLACE_MORPH and place[1] == control:
        tb.morph_value[c] = x
        changed = True
    elif place[0] == PLACE_XY and (control == place[1] or control == place[2]):
        tb.xy_value[c, 0 if control == place[1] else 1] = x
        changed = True
    for i in range(cfg.dims.shape[0]):
        d = cfg.dims[i]
        if int(d[0]) == control and (d[1] < 0 or int(d[1]) == c):
            tb.offsets[c, int(d[2])] = (x - 64 / 127.0) * d[3]
            changed = True
    if not changed:
        return False
    return _moved_update(cfg, tb, c)


@_jit
def _glide_advance(cfg, s, tb, frame):
    """Each channel's sounding place follows its target by an exact exponential in frames, so it is a
    function of the event times alone (any block size gives the same path)."""
    dt = frame - s.st[S_GLIDE_FRAME]
    tau = cfg.glide_tau
    if tau <= 0:
        tb.position[:, :] = tb.targets
    elif dt > 0:
        k = 1.0 - math.exp(-dt / tau)
        for c in range(16):
            for j in range(tb.position.shape[1]):
                tb.position[c, j] += (tb.targets[c, j] - tb.position[c, j]) * k
    if frame > s.st[S_GLIDE_FRAME]:
        s.st[S_GLIDE_FRAME] = frame


@_jit
def _glide_predict(cfg, s, tb, frame, c, out):
    """Where channel c's place will be at ``frame`` if no target moves meanwhile."""
    dt = frame - s.st[S_GLIDE_FRAME]
    if cfg.glide_tau <= 0:
        out[:] = tb.targets[c]
    elif dt <= 0:
        out[:] = tb.position[c]
    else:
        k = math.exp(-dt / cfg.glide_tau)
        for j in range(out.shape[0]):
            out[j] = tb.targets[c, j] + (tb.position[c, j] - tb.targets[c, j]) * k


@_jit
def _glide_moving(tb):
    for c in range(16):
        for j in range(tb.position.shape[1]):
            if abs(tb.position[c, j] - tb.targets[c, j]) > 1e-6:
                return True
    return False


@_jit
def _place_moved(cfg, v, s, tb, t, c):
    """Channel c's target moved at ``t``: with nothing of it sounding, it jumps there (silently, and
    its onset table is remade at once, so a note that follows a program change starts as the new
    instrument); otherwise its voices glide, and the onset tables follow within places_refresh_frames."""
    sounding = False
    for slot in range(v.t_end.shape[0]):
        if v.timbre[slot] and v.t_end[slot] > t and v.channel[slot] == c:
            sounding = True
    if not sounding:
        tb.position[c, :] = tb.targets[c]
        # For the next boundary, with the voices it will take: it stands in for that boundary's request.
        _post(cfg, v, s, tb, t, (t // cfg.hop_frames + 1) * cfg.hop_frames, True)
    else:
        s.st[S_PLACES_DIRTY] = 1


# ------------------------------------------------------------------------------------ the timbre worker
@_jit
def _post(cfg, v, s, tb, t, boundary, places):
    """Ask the worker for the frames of every sounding timbre voice at ``boundary``, as they will be if
    nothing changes meanwhile (a release in between is heard from the boundary after), and, with
    ``places``, for onset tables at the channels' places then.

    The request is one slab under a sequence lock: the count is odd while it is written, and the
    worker copies it and checks the count did not move; the block never waits for the worker, and a
    request the worker has not read yet is replaced by the newer one (``places`` requests are counted
    in REQ_PLACES, so none is lost)."""
    seq = tb.req_seq[REQ_SEQ]
    store_release(tb.req_seq, REQ_SEQ, seq + 1)
    fence()  # the writes below come after the odd count
    for c in range(16):  # every channel's place at the boundary (a voice's is its channel's)
        _glide_predict(cfg, s, tb, boundary, c, tb.req_places[c])
    rows = tb.req_rows
    sr = cfg.sample_rate
    n = 0
    for slot in range(v.t_end.shape[0]):
        if not v.timbre[slot] or v.t_end[slot] <= boundary - cfg.hop_frames or n >= rows.shape[0]:
            continue
        r = rows[n]
        r[R_SLOT] = slot
        r[R_T_ON] = v.t_on[slot]
        r[R_NOTE] = v.note[slot]
        r[R_VELOCITY] = v.velocity[slot]
        r[R_ON] = (boundary - v.t_on[slot]) / sr
        r[R_OFF] = (boundary - v.t_off[slot]) / sr if v.t_off[slot] < FAR_FUTURE else -1.0
        r[R_FREQ] = v.freq_after[slot]
        r[R_Z:] = tb.req_places[v.channel[slot]]
        n += 1
    meta = tb.req_meta
    meta[M_BOUNDARY] = boundary
    meta[M_COUNT] = n
    if places:
        tb.req_seq[REQ_PLACES] += 1
        s.st[S_PLACES_DIRTY] = 0
        s.st[S_PLACES_POSTED] = t
    store_release(tb.req_seq, REQ_SEQ, seq + 2)
    if n > 0:
        s.st[S_POSTED] = boundary
    s.st[S_STOPPED] = 1  # offline, the renderer decodes this before the block goes on


@_jit
def read_request(req_seq, req_rows, req_meta, req_places, rows, meta, places):
    """The worker's side of :func:`_post`: copy the request into ``rows``, ``meta`` and ``places``;
    returns its sequence count, or -1 when it was being written (read again)."""
    first = load_acquire(req_seq, REQ_SEQ)
    if first & 1:
        return -1
    n = req_meta[M_COUNT]
    rows[:n] = req_rows[:n]
    meta[:] = req_meta
    meta[M_PLACES] = req_seq[REQ_PLACES]
    places[:, :] = req_places
    fence()
    if load_acquire(req_seq, REQ_SEQ) != first:
        return -1
    return first


@_jit
def _take_newest(ready_header, ready, free_header, free, held, row):
    """The newest slab in a pool's ready ring, or ``held`` when none came (-1: none held); the slabs
    it replaces go back to the pool's free ring."""
    while True:
        i = ring_peek(ready_header, ready)
        if i < 0:
            return held
        slab = ready[i, 0]
        ring_release(ready_header)
        if held >= 0:
            row[0] = held
            ring_push(free_header, free, row)
        held = slab


@_jit
def take_onset_tables(tb, s):
    """The newest onset tables the worker has made become current; older ones go back to it."""
    s.st[S_ONSET_TABLE] = _take_newest(tb.on_ready_header, tb.on_ready, tb.on_free_header, tb.on_free,
                                       s.st[S_ONSET_TABLE], tb.pool_row)


@_jit
def _take_result(tb, s):
    """The newest decoded frames become the held result; older ones go back to the worker."""
    s.st[S_RESULT] = _take_newest(tb.res_ready_header, tb.res_ready, tb.res_free_header, tb.res_free,
                                  s.st[S_RESULT], tb.pool_row)


@_jit
def _timbre_tick(cfg, v, ch, s, tb, t):
    """At a control hop boundary: new frames for every sounding timbre voice (not those that began
    here), ramping over the next hop; released voices the model has made silent are freed."""
    hop = cfg.hop_frames
    _take_result(tb, s)
    expected = 0
    for slot in range(v.t_end.shape[0]):
        if v.timbre[slot] and v.t_end[slot] > t and v.t_on[slot] < t:
            expected += 1
    r = s.st[S_RESULT]
    boundary = tb.res_meta[r, M_BOUNDARY] if r >= 0 else -1
    if boundary != t and s.st[S_POSTED] == t:  # asked for and not ready
        s.st[S_TIMBRE_LATE] += expected
    if r >= 0 and s.st[S_APPLIED] < boundary <= t:
        s.st[S_APPLIED] = boundary
        for i in range(tb.res_meta[r, M_COUNT]):
            slot = tb.res_ids[r, i, 0]
            # A row counts only if its slot still plays the voice it was decoded for.
            if tb.res_ids[r, i, 1] != v.t_on[slot] or not v.timbre[slot] or v.t_end[slot] <= t:
                continue
            s.st[S_TIMBRE_FRAMES] += 1
            level = float(tb.res_amp[r, i])
            v.harmonics[slot, :] = tb.res_h[r, i]
            begin_ramp(v, slot, t, v.freq_after[slot], v.gain_l_after[slot], v.gain_r_after[slot],
                       level * cfg.timbre_gain, hop)
            v.table_after[slot, :] = tb.res_tables[r, i]
            v.noise_after[slot, :] = tb.res_noise[r, i]
            if level > v.timbre_peak[slot]:
                v.timbre_peak[slot] = level
            if v.t_off[slot] < FAR_FUTURE:
                quiet = level < _SILENT or level < v.timbre_peak[slot] * _SILENT_RANGE
                if quiet or t - v.t_off[slot] >= cfg.timbre_free_frames:
                    kill_voice(v, slot, t + hop, cfg.steal_fade_frames)  # after the ramp down to silence
    places = s.st[S_PLACES_DIRTY] != 0 or _glide_moving(tb)
    places = places and t - s.st[S_PLACES_POSTED] >= cfg.places_refresh_frames
    _post(cfg, v, s, tb, t, t + hop, places)


@_jit
def _timbre_sounding(v, t):
    for slot in range(v.t_end.shape[0]):
        if v.timbre[slot] and v.t_end[slot] > t:
            return True
    return False


# ------------------------------------------------------------------------------------ the block
@_jit
def begin(s, frames):
    """Start a block of ``frames`` at the engine's frame: the mix cleared, the onsets emptied."""
    st = s.st
    st[S_CURSOR] = st[S_FRAME]
    st[S_END] = st[S_FRAME] + frames
    st[S_ONSETS] = 0
    s.left[:frames] = 0.0
    s.right[:frames] = 0.0


@_jit
def run(cfg, v, ch, s, tb, sync):
    """Render the block from where it stands to its end; with ``sync``, return STOPPED right after a
    request to the timbre worker (call again once it is served), else DONE at the block's end."""
    st = s.st
    start = st[S_FRAME]
    end = st[S_END]
    hop = cfg.hop_frames
    e = s.row
    t = st[S_CURSOR]
    uses_timbre = tb.targets.shape[1] > 0
    if uses_timbre:
        take_onset_tables(tb, s)
    st[S_STOPPED] = 0
    while t < end:
        while _next_frame(s) <= t:
            _pop(s, e)
            _apply(cfg, v, ch, s, tb, t, e)
            if sync and st[S_STOPPED]:
                st[S_CURSOR] = t
                return STOPPED
        stop = min(_next_frame(s), end)
        if uses_timbre and _timbre_sounding(v, t):
            if t % hop == 0 and t != st[S_LAST_TICK]:
                st[S_LAST_TICK] = t
                _timbre_tick(cfg, v, ch, s, tb, t)
                if sync and st[S_STOPPED]:
                    st[S_CURSOR] = t
                    return STOPPED
            stop = min(stop, (t // hop + 1) * hop)  # the next control hop boundary
        elif uses_timbre and st[S_PLACES_DIRTY] and t % hop == 0 and t - st[S_PLACES_POSTED] >= cfg.places_refresh_frames:
            _post(cfg, v, s, tb, t, t + hop, True)  # a glide with nothing sounding: the onset tables follow
            if sync:
                st[S_CURSOR] = t
                return STOPPED
        _render(cfg, v, s, t, stop - t, t - start)
        t = stop
        st[S_CURSOR] = t
    return DONE


@_jit
def _render(cfg, v, s, t0, n, offset):
    k = 0
    act = s.act
    for slot in range(v.t_end.shape[0]):
        if v.t_end[slot] > t0:
            act[k] = slot
            k += 1
    if k == 0:
        return
    kernel.render_segment(
        t0, n, act[:k], v.t_on, v.t_off, v.t_kill, v.level_off, v.attack_frames, v.decay_frames, v.sustain_level,
        v.release_frames, v.amp_before, v.amp_after, v.ramp_at, v.phase_at, v.freq_before, v.freq_after,
        v.gain_l_before, v.gain_l_after, v.gain_r_before, v.gain_r_after, v.table_before, v.table_after,
        v.noise_before, v.noise_after, v.noise_offset, v.noise_bands, cfg.hop_frames, cfg.steal_fade_frames,
        ENVELOPE_CURVE, EXP_CURVE, ENVELOPE_ANCHOR, s.env, s.noise_now, s.noise_then,
        s.left[offset : offset + n], s.right[offset : offset + n])


@_jit
def finish(cfg, s, tb, out):
    """End the block: the places glide on, the mix is scaled into ``out`` (frames, 2) float32."""
    st = s.st
    n = st[S_END] - st[S_FRAME]
    st[S_FRAME] = st[S_END]
    st[S_CURSOR] = st[S_END]
    if tb.targets.shape[1] > 0:
        _glide_advance(cfg, s, tb, st[S_END])  # the places move on even while no timbre voice sounds
    peak, energy = kernel.finish_block(s.left[:n], s.right[:n], cfg.master_gain, out)
    s.sf[F_PEAK] = peak
    s.sf[F_RMS] = math.sqrt(energy / (2 * n)) if n > 0 else 0.0


@_jit
def block(cfg, v, ch, s, tb, out):
    """One whole block into ``out`` (frames, 2) float32, never stopping: the live callback's call."""
    begin(s, out.shape[0])
    run(cfg, v, ch, s, tb, False)
    finish(cfg, s, tb, out)
