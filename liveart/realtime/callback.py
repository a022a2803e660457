"""The live host's cycle, compiled: what the audio callback does, for any backend, without the GIL.

:func:`cycle` is one audio period. A backend (JACK's process callback, a PortAudio stream callback,
or the test suite's fake backend) hands it the cycle's first frame, the MIDI that came in with frame
offsets, and buffers for the audio and the MIDI out; it:

- tells MIDI that JACK2 hands a client again after an xrun (the rules of
  :class:`liveart.hosts.realtime.RepeatedMidi`), and drops it;
- keeps time: cycles the server ran without it (an xrun) are rendered unheard, so the engine stays
  locked to the server's frames; a cycle it has already played (a late callback read the next
  cycle's start) is waited out in silence;
- schedules the player's messages into the engine at their frames (a flood: at most
  MAX_EVENTS_PER_CYCLE a cycle, note-offs always pass) and the conductor's (the melody model's notes,
  panic and release-all markers), and runs the engine's block (:func:`liveart.realtime.block.block`);
- hands on, through rings, what Python threads need: every message played (for the take), the
  player's messages and the clock (for the conductor), the block's loudness and onsets (for the
  visualizer); and writes MIDI out: note-offs for every sounding (or every ever sent) note at a
  panic (or at the end), then the conductor's stamped messages at their offsets.

Counters, not log lines: :data:`L_FIELDS` names them. The state is a :class:`Live` named tuple of
preallocated arrays; nothing here allocates, locks or waits.
"""

from __future__ import annotations

from collections import namedtuple

import numba
import numpy as np

from .. import events as ev
from ..midi.messages import CONTROL_CHANGE, NOTE_OFF, NOTE_ON, PITCH_BEND, PROGRAM_CHANGE
from . import block as blk
from .atomics import fence, load_acquire, store_release
from .rings import ring_peek, ring_push, ring_release

MAX_EVENTS_PER_CYCLE = 64  # input messages taken into one cycle; beyond that note-ons are dropped
MAX_CATCH_UP_FRAMES = 4096  # after an xrun, up to this many missed frames are rendered unheard
REPEAT_WINDOW = 3  # a buffer read again up to this many callbacks later is told (RepeatedMidi)
TIMING_HISTORY = 1 << 16
MSG = 5  # a message row: frame (or offset), length, up to three bytes

Live = namedtuple("Live", (
    "ls", "durations", "wake_frames", "held_keys", "sounding_out", "ever_out", "previous", "seen", "scratch",
    "row", "host_header", "host", "main_header", "main", "played_header", "played", "control_header", "control",
    "out_header", "out", "now_header", "now", "visual_header", "visual", "visual_row"))

# Live.ls: counters and registers.
(L_CALLBACKS, L_INPUT, L_DROPPED, L_LATE_INPUT, L_GEN_LATE, L_GEN_LATE_MAX, L_CAUGHT_UP, L_SLIPPED, L_HELD,
 L_REPEATED, L_REPEATED_MOVED, L_NEXT_CYCLE, L_HAVE_CYCLE, L_CYCLE, L_PREVIOUS, L_SINCE, L_SEEN, L_EXTERNAL_CLOCK,
 L_CONDUCTOR, L_OFFS_MODE, L_OFFS_AT, L_OUT_DROPPED, L_RING_FULL, L_PUB_SEQ, L_PUB_FRAME, L_PUB_TIME, L_PUB_FRAMES,
 L_SIZE) = range(28)
L_FIELDS = {"callbacks": L_CALLBACKS, "input_messages": L_INPUT, "input_dropped": L_DROPPED,
            "late_input": L_LATE_INPUT, "generated_late": L_GEN_LATE, "generated_late_max_frames": L_GEN_LATE_MAX,
            "caught_up_frames": L_CAUGHT_UP, "slipped_frames": L_SLIPPED, "held_frames": L_HELD,
            "repeated_input": L_REPEATED, "repeated_input_moved": L_REPEATED_MOVED, "midi_out_dropped": L_OUT_DROPPED,
            "rings_full": L_RING_FULL}
# Host and main rows (the conductor's and the main thread's → cycle): frame, kind (an engine event
# kind, or a marker), channel, a, b.
PANIC, RELEASE_ALL = -2, -3
# Now rows (markers for MIDI out, sent at once): what note-offs to send.
OFFS_SOUNDING, OFFS_EVER = 1, 2

_jit = numba.njit(cache=True, nogil=True, error_model="numpy")


# ------------------------------------------------------------------------ repeated MIDI
@_jit
def _same_list(a, na, b, nb):
    if na != nb:
        return False
    for i in range(na):
        for k in range(MSG):
            if a[i, k] != b[i, k]:
                return False
    return True


@_jit
def filter_repeats(lv, start, msgs, n):
    """Drop what JACK2 hands again after an xrun from ``msgs[:n]`` (rows of offset, length, bytes)
    read in a cycle starting at ``start``; returns how many rows remain (moved to the front).

    Two rules: a callback that reads exactly the same non-empty list as the last callback that read
    any, at most REPEAT_WINDOW callbacks before, is reading that buffer again (all of it is repeated);
    and in a second run of a cycle (the same start as the callback before), a message equal to one
    already read in that cycle, at the same offset, is repeated."""
    ls = lv.ls
    prev = lv.previous
    cap = prev.shape[0]
    n = min(n, cap)
    ls[L_SINCE] += 1
    again = False
    if n > 0:
        again = ls[L_SINCE] <= REPEAT_WINDOW and _same_list(msgs, n, prev, ls[L_PREVIOUS])
        prev[:n] = msgs[:n]
        ls[L_PREVIOUS] = n
        ls[L_SINCE] = 0
    if again:
        ls[L_REPEATED] += n
    seen = lv.seen
    if start != ls[L_CYCLE]:  # a new cycle (or a late run that read a later start)
        if again:
            ls[L_REPEATED_MOVED] += n
        ls[L_CYCLE] = start
        seen[:n] = msgs[:n]
        ls[L_SEEN] = n
        return 0 if again else n
    if again:
        return 0
    kept = 0
    for i in range(n):
        repeat = False
        for j in range(ls[L_SEEN]):
            same = True
            for k in range(MSG):
                if seen[j, k] != msgs[i, k]:
                    same = False
                    break
            if same:
                repeat = True
                break
        if repeat:
            ls[L_REPEATED] += 1
            continue
        if ls[L_SEEN] < seen.shape[0]:
            seen[ls[L_SEEN]] = msgs[i]
            ls[L_SEEN] += 1
        if kept != i:
            msgs[kept] = msgs[i]
        kept += 1
    return kept


# ------------------------------------------------------------------------ the cycle
@_jit
def _push_message(lv, header, data, frame, length, b0, b1, b2):
    row = lv.row
    row[0] = frame
    row[1] = length
    row[2] = b0
    row[3] = b1
    row[4] = b2
    if not ring_push(header, data, row):
        lv.ls[L_RING_FULL] += 1


@_jit
def _record(lv, frame, length, b0, b1, b2):
    _push_message(lv, lv.played_header, lv.played, frame, length, b0, b1, b2)


@_jit
def _player_message(lv, s, frame, length, b0, b1, b2):
    """A player's channel message at ``frame``: into the engine, the take and the conductor."""
    kind = b0 & 0xF0
    c = b0 & 0x0F
    if length < 2 and kind != PROGRAM_CHANGE:
        return
    if kind == NOTE_ON and length >= 3:
        if b2 & 0x7F:
            blk.schedule(s, frame, ev.NOTE_ON, c, b1 & 0x7F, b2 & 0x7F)
            lv.held_keys[c, b1 & 0x7F] = 1
        else:
            blk.schedule(s, frame, ev.NOTE_OFF, c, b1 & 0x7F, 0)
            lv.held_keys[c, b1 & 0x7F] = 0
    elif kind == NOTE_OFF and length >= 3:
        blk.schedule(s, frame, ev.NOTE_OFF, c, b1 & 0x7F, 0)
        lv.held_keys[c, b1 & 0x7F] = 0
    elif kind == CONTROL_CHANGE and length >= 3:
        blk.schedule(s, frame, ev.CONTROL_CHANGE, c, b1 & 0x7F, b2 & 0x7F)
    elif kind == PITCH_BEND and length >= 3:
        blk.schedule(s, frame, ev.PITCH_BEND, c, ((b2 & 0x7F) << 7 | (b1 & 0x7F)) - 8192, 0)
    elif kind == PROGRAM_CHANGE and length >= 2:
        blk.schedule(s, frame, ev.PROGRAM_CHANGE, c, b1 & 0x7F, 0)
    else:
        return
    _record(lv, frame, length, b0, b1, b2)
    if lv.ls[L_CONDUCTOR]:
        _push_message(lv, lv.control_header, lv.control, frame, length, b0, b1, b2)


@_jit
def _event_message(lv, frame, kind, c, a, b):
    """Record an engine event from the conductor as the MIDI message it stands for."""
    if kind == ev.NOTE_ON:
        _record(lv, frame, 3, NOTE_ON | c, a, b)
    elif kind == ev.NOTE_OFF:
        _record(lv, frame, 3, NOTE_OFF | c, a, 0)
    elif kind == ev.CONTROL_CHANGE:
        _record(lv, frame, 3, CONTROL_CHANGE | c, a, b)
    elif kind == ev.PITCH_BEND:
        x = a + 8192
        _record(lv, frame, 3, PITCH_BEND | c, x & 0x7F, x >> 7)
    elif kind == ev.PROGRAM_CHANGE:
        _record(lv, frame, 2, PROGRAM_CHANGE | c, a, 0)


@_jit
def _events_from(lv, s, start, end, header, rows):
    """Events and markers from a Python thread's ring into the engine, those due before ``end`` (the
    rest wait in the ring, so that the take holds only what was played; one due before ``start``
    plays late). A thread pushes its events in time order."""
    ls = lv.ls
    while True:
        i = ring_peek(header, rows)
        if i < 0:
            return
        r = rows[i]
        frame, kind, c, a, b = r[0], r[1], r[2], r[3], r[4]
        if frame >= end and kind != PANIC and kind != RELEASE_ALL:
            return
        ring_release(header)
        if kind == PANIC or kind == RELEASE_ALL:
            cc = ev.CC_ALL_SOUND_OFF if kind == PANIC else ev.CC_ALL_NOTES_OFF
            for ch in range(16):
                blk.schedule(s, start, ev.CONTROL_CHANGE, ch, ev.CC_SUSTAIN, 0)
                blk.schedule(s, start, ev.CONTROL_CHANGE, ch, cc, 0)
                _record(lv, start, 3, CONTROL_CHANGE | ch, ev.CC_SUSTAIN, 0)
                _record(lv, start, 3, CONTROL_CHANGE | ch, cc, 0)
            continue
        if frame < start:
            ls[L_GEN_LATE] += 1
            if start - frame > ls[L_GEN_LATE_MAX]:
                ls[L_GEN_LATE_MAX] = start - frame
            frame = start
        blk.schedule(s, frame, kind, c, a, b)
        _event_message(lv, frame, kind, c, a, b)


@_jit
def _host_events(lv, s, start, end):
    _events_from(lv, s, start, end, lv.host_header, lv.host)
    _events_from(lv, s, start, end, lv.main_header, lv.main)


@_jit
def _publish(lv, frame, now_us, nframes):
    """Where the engine stands (its frame at this cycle's start, when that was, the cycle's length),
    for Python threads that place things in time (:func:`published`); under a sequence lock."""
    ls = lv.ls
    seq = ls[L_PUB_SEQ]
    store_release(ls, L_PUB_SEQ, seq + 1)
    fence()
    ls[L_PUB_FRAME] = frame
    ls[L_PUB_TIME] = now_us
    ls[L_PUB_FRAMES] = nframes
    store_release(ls, L_PUB_SEQ, seq + 2)


@_jit
def published(ls, out):
    """Copy (frame, microseconds, frames) of the last :func:`_publish` into ``out``; False when it
    was being written (read again)."""
    first = load_acquire(ls, L_PUB_SEQ)
    if first & 1:
        return False
    out[0] = ls[L_PUB_FRAME]
    out[1] = ls[L_PUB_TIME]
    out[2] = ls[L_PUB_FRAMES]
    fence()
    return load_acquire(ls, L_PUB_SEQ) == first


@_jit
def _visual(lv, s, start, end):
    st = s.st
    row = lv.visual_row
    n = st[blk.S_ONSETS]
    row[0] = start
    row[1] = end
    row[2] = s.sf[blk.F_RMS]
    for k in range(max(n, 1)):
        if n:
            for j in range(4):
                row[3 + j] = s.onsets[k, j]
        else:
            row[3] = -1.0
        if not ring_push(lv.visual_header, lv.visual, row):
            lv.ls[L_RING_FULL] += 1
            return


@_jit
def _write_out(lv, midi_out, n_out, offset, length, b0, b1, b2):
    """Append a message to the cycle's MIDI out rows; False when they are full."""
    if n_out >= midi_out.shape[0]:
        return False
    r = midi_out[n_out]
    r[0] = offset
    r[1] = length
    r[2] = b0
    r[3] = b1
    r[4] = b2
    if b0 & 0xF0 == NOTE_ON and b2 > 0:
        lv.sounding_out[b0 & 0x0F, b1] = 1
        lv.ever_out[b0 & 0x0F, b1] = 1
    elif b0 & 0xF0 == NOTE_OFF or b0 & 0xF0 == NOTE_ON:
        lv.sounding_out[b0 & 0x0F, b1] = 0
    return True


@_jit
def _midi_out(lv, start, end, midi_out):
    """This cycle's MIDI out: note-offs a marker asked for (what does not fit goes next cycle), then
    the conductor's messages due before ``end`` at their offsets (in order). Returns the count."""
    ls = lv.ls
    n = 0
    while True:
        if ls[L_OFFS_MODE] == 0:
            i = ring_peek(lv.now_header, lv.now)
            if i < 0:
                break
            ls[L_OFFS_MODE] = lv.now[i, 1]
            ls[L_OFFS_AT] = 0
            ring_release(lv.now_header)
        notes = lv.sounding_out if ls[L_OFFS_MODE] == OFFS_SOUNDING else lv.ever_out
        while ls[L_OFFS_AT] < 16 * 128:
            c = ls[L_OFFS_AT] // 128
            note = ls[L_OFFS_AT] % 128
            if notes[c, note]:
                if n >= midi_out.shape[0]:
                    return n  # the rest next cycle
                _write_out(lv, midi_out, n, 0, 3, NOTE_OFF | c, note, 0)
                n += 1
            ls[L_OFFS_AT] += 1
        if ls[L_OFFS_MODE] == OFFS_SOUNDING:
            lv.sounding_out[:, :] = 0
        ls[L_OFFS_MODE] = 0
    last = 0
    while True:
        i = ring_peek(lv.out_header, lv.out)
        if i < 0 or lv.out[i, 0] >= end:
            break
        r = lv.out[i]
        last = max(last, r[0] - start)  # offsets in order (a late one goes out at once)
        if _write_out(lv, midi_out, n, last, r[1], r[2], r[3], r[4]):
            n += 1
        else:
            ls[L_OUT_DROPPED] += 1
        ring_release(lv.out_header)
    return n


@_jit
def cycle(cfg, v, ch, s, tb, lv, start, now_us, nframes, midi_in, n_in, audio, midi_out):
    """One audio period starting at the server's frame ``start`` (mod 2**32 on JACK: only differences
    are used), called at ``now_us`` (the backend's clock, microseconds): ``midi_in[:n_in]`` rows of
    (offset, length, bytes), ``audio`` (nframes, 2) float32 to fill, ``midi_out`` rows to fill;
    returns how many MIDI rows were written."""
    ls = lv.ls
    engine_start = s.st[blk.S_FRAME]
    # Cycles the server ran without liveart (an xrun): the engine catches up on them, unheard, so its
    # time stays locked to the server's (the clock, MIDI out, the take keep their place).
    gap = (start - ls[L_NEXT_CYCLE]) & 0xFFFFFFFF if ls[L_HAVE_CYCLE] else 0
    hold = False
    if 0 < gap <= MAX_CATCH_UP_FRAMES:
        catch = lv.scratch[:gap]
        _host_events(lv, s, engine_start, engine_start + gap)
        blk.block(cfg, v, ch, s, tb, catch)
        _visual(lv, s, engine_start, engine_start + gap)
        ls[L_CAUGHT_UP] += gap
        engine_start = s.st[blk.S_FRAME]
    elif 0xFFFFFFFF - MAX_CATCH_UP_FRAMES < gap:
        # A cycle the engine has already played: JACK2 runs its graph again when a client did not
        # finish in time, and a callback that ran late read the next cycle's start as its own. Wait
        # in silence (MIDI in kept) until the server's cycles meet the engine's time again.
        hold = True
        ls[L_HELD] += nframes
    elif MAX_CATCH_UP_FRAMES < gap < 0x80000000:
        ls[L_SLIPPED] += gap
    if not hold:
        ls[L_NEXT_CYCLE] = (start + nframes) & 0xFFFFFFFF
        ls[L_HAVE_CYCLE] = 1
    _publish(lv, engine_start, now_us, nframes)
    n = filter_repeats(lv, start, midi_in, n_in)
    taken = 0
    for i in range(n):
        m = midi_in[i]
        ls[L_INPUT] += 1
        length = m[1]
        if length < 1:
            continue
        frame = engine_start + m[0]
        if m[2] >= 0xF0:  # clock and transport: the conductor's, when it follows an external clock
            if ls[L_EXTERNAL_CLOCK]:
                _push_message(lv, lv.control_header, lv.control, frame, length, m[2], m[3], m[4])
            continue
        taken += 1
        note_off = (m[2] & 0xF0 == NOTE_OFF) or (m[2] & 0xF0 == NOTE_ON and length > 2 and m[4] == 0)
        if taken > MAX_EVENTS_PER_CYCLE and not note_off:
            ls[L_DROPPED] += 1  # a flood: note-offs always go through
            continue
        _player_message(lv, s, frame, length, m[2], m[3], m[4])
    if hold:
        audio[:, :] = 0.0
        ls[L_CALLBACKS] += 1
        return 0
    _host_events(lv, s, engine_start, engine_start + nframes)
    blk.block(cfg, v, ch, s, tb, audio)
    _visual(lv, s, engine_start, engine_start + nframes)
    n_out = _midi_out(lv, engine_start, engine_start + nframes, midi_out)
    ls[L_CALLBACKS] += 1
    return n_out


# ------------------------------------------------------------------------ the Python side
class LiveState:
    """The cycle's state and its rings' Python ends. Producers on the Python side: the conductor
    (``host``, ``out``, ``now`` during play) and the main thread (``main``; ``now`` at the end, once
    the conductor has stopped); consumers: the main thread (``played``, ``visual``) and the
    conductor (``control``)."""

    RING_ROWS = 4096

    def __init__(self, conductor: bool, external_clock: bool):
        from .rings import Ring

        n = self.RING_ROWS
        self.host, self.main = Ring(n, MSG), Ring(256, MSG)
        self.played, self.control = Ring(n, MSG), Ring(n, MSG)
        self.out, self.now = Ring(n, MSG), Ring(16, MSG)
        self.visual = Ring(n, 7, np.float64)
        ls = np.zeros(L_SIZE, np.int64)
        ls[L_CONDUCTOR] = conductor
        ls[L_EXTERNAL_CLOCK] = external_clock
        ls[L_CYCLE] = -1
        self.live = Live(
            ls=ls, durations=np.zeros(TIMING_HISTORY, np.int64), wake_frames=np.zeros(TIMING_HISTORY, np.int64),
            held_keys=np.zeros((16, 128), np.int8), sounding_out=np.zeros((16, 128), np.int8),
            ever_out=np.zeros((16, 128), np.int8), previous=np.zeros((MAX_EVENTS_PER_CYCLE * 4, MSG), np.int64),
            seen=np.zeros((MAX_EVENTS_PER_CYCLE * 4, MSG), np.int64),
            scratch=np.zeros((MAX_CATCH_UP_FRAMES, 2), np.float32), row=np.zeros(MSG, np.int64),
            host_header=self.host.header, host=self.host.data, main_header=self.main.header, main=self.main.data,
            played_header=self.played.header, played=self.played.data, control_header=self.control.header,
            control=self.control.data, out_header=self.out.header, out=self.out.data, now_header=self.now.header,
            now=self.now.data, visual_header=self.visual.header, visual=self.visual.data,
            visual_row=np.zeros(7, np.float64))
        self._published = np.zeros(3, np.int64)
        self._warm_up()

    def _warm_up(self) -> None:
        """Compile (or load from numba's cache) what the Python threads call, now: a first call
        during the performance would hold the GIL for seconds while it compiles."""
        from .rings import Ring

        for dtype, width in ((np.int64, MSG), (np.float64, 7)):
            ring = Ring(2, width, dtype)
            ring.push(np.zeros(width, dtype))
            ring.pop_many()
            ring.push(np.zeros(width, dtype))
            ring.pop()
            len(ring)
        self.published()

    @property
    def ls(self) -> np.ndarray:
        return self.live.ls

    def counters(self) -> dict:
        return {name: int(self.live.ls[i]) for name, i in L_FIELDS.items()}

    def published(self) -> tuple[int, int, int]:
        """(engine frame at the last cycle's start, the backend's clock then in microseconds, frames)."""
        while not published(self.live.ls, self._published):
            pass
        f, t, n = self._published
        return int(f), int(t), int(n)

    def offs_pending(self) -> bool:
        return len(self.now) > 0 or self.live.ls[L_OFFS_MODE] != 0
