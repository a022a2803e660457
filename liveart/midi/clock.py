"""The live host's musical clock, in audio frames: an internal clock, or one that follows MIDI clock.

Time here is always an absolute audio frame (an ``int``) given by the caller; nothing in this
module reads a wall clock. Both clocks answer the same questions, for the one thread that conducts
the melody model:

- :meth:`next_step` — the first 16th step at or after a frame, as ``(step, frame)``;
- :meth:`next_step_after` — the step after the one just played, as ``(step, frame)``;
- :meth:`step_frame` — the frame of a given step;
- :meth:`position_steps` — the song position at a frame, in 16ths (fractions between steps).

Units: a *step* is a 16th note, the melody model's grid, and step numbers are song positions in
16ths (the unit of MIDI's Song Position Pointer). A *tick* is one MIDI clock pulse:
``TICKS_PER_QUARTER`` (24) to the quarter note, so ``TICKS_PER_STEP`` (6) to the step. Tick and
step 0 are the start of the song.

:class:`InternalClock` is exact: a tempo map of straight segments, computed in rational arithmetic
from the last tempo change, so a tick lands on the same frame after hours as a closed formula puts
it. :class:`ClockFollower` estimates tempo and phase from jittery MIDI clock arrivals with a
windowed least-squares line through recent ticks (frame against tick count), gated against
outliers (bunched or late arrivals) and restarted when the ticks leave the line for good (a tempo
change), so its predictions are far steadier than the arrivals and follow a new tempo within a
fraction of a beat.

The conductor's loop, with either clock::

    step = None                               # the last step played; None after the position moved
    each block, at frame `now`, deciding what sounds before `horizon`:
        nxt = clock.next_step(now) if step is None else clock.next_step_after(step)
        while nxt is not None and nxt[1] < horizon:
            step, frame = nxt                 # frame may be a little before now if the clock corrected
            ... play step at max(frame, now) ...
            nxt = clock.next_step_after(step)

Set ``step = None`` after start() or continue_(), and when ClockFollower.feed returns 'start',
'continue' or 'position': the song position moved, and step numbers start again from it. Within
a run of the clock the steps handed out this way go up by one, whatever the estimator corrects.
Polling :meth:`next_step` alone works too (see its docstring).
"""

from __future__ import annotations

import abc
import math
import operator
from collections import deque
from fractions import Fraction
from typing import NamedTuple

from .messages import CLOCK_CONTINUE, CLOCK_START, CLOCK_STOP, CLOCK_TICK, SONG_POSITION
from .messages import as_bytes as _message_bytes

TICKS_PER_QUARTER = 24  # MIDI clock pulses per quarter note
TICKS_PER_STEP = 6  # a step is a 16th note
SECONDS_PER_MINUTE = 60
MIN_BPM = 20.0
MAX_BPM = 400.0

# MIDI status bytes the follower understands.
DATA_BITS = 7  # a MIDI data byte carries 7 bits

MAX_SEGMENTS = 64  # the internal clock's tempo map keeps this many segments (older ones are forgotten)

# The follower's estimator.
WINDOW_TICKS = 96  # ticks in the least-squares window at most (four beats)
MIN_TEMPO_TICKS = 6  # ticks before a tempo is told, from a cold start (one step)
MIN_GATE_TICKS = 12  # ticks in the window before outliers are set aside
OUTLIER_SIGMAS = 4.0  # a tick further than this many jitter deviations from the line is an outlier
OUTLIER_FLOOR_SECONDS = 0.002  # ... and further than this (a clean clock has a tiny jitter)
CHANGE_TICKS = 3  # this many outliers in a row on one side of the line: the tempo (or phase) changed
MAD_TO_SIGMA = 1.4826  # median absolute deviation → standard deviation (robust to bunched ticks)
TRIM_PASSES = 3  # fits that drop the window's outliers, at most, each time it changes
BIAS_SMOOTHING = 0.2  # weight of a new residual in the running mean residual (the line's bias)
BIAS_SIGMAS = 4.0  # a mean residual this many of its own deviations from 0: the tempo is moving
BIAS_FLOOR_SECONDS = 0.0002  # ... and at least this large (a clean clock's rounding is not a ramp)
MAX_TICK_GAP_SECONDS = 2.0  # a longer gap between ticks restarts the estimator
# Predictions hold for this many tick periods past the last tick at most (an 8th; and never past
# MAX_TICK_GAP_SECONDS): a running clock ticks all along, so a clock that stopped ticking without a
# Stop reaching liveart (JACK can drop a cycle's MIDI at an xrun: CI once had the model play 1.8 s
# past the Stop) stops the model within an 8th. The live host decides a step about 10 ms ahead.
PREDICTION_TICKS = 12
TEMPO_REPORT_BPM = 1.0
MAX_LOST_TICKS = 12  # at most half a beat of ticks is taken as lost in transport
LOST_TICK_TOLERANCE = 0.25  # ticks late by a whole number of periods, give or take this much of one  # feed() says 'tempo' when the estimate moved by more than this since it last did


def check_bpm(bpm: float) -> float:
    """``bpm`` as a float, or ValueError when it is not a number from MIN_BPM to MAX_BPM."""
    try:
        value = float(bpm)
    except (TypeError, ValueError) as e:
        raise ValueError(f"tempo must be a number of beats per minute, not {bpm!r}") from e
    if not (math.isfinite(value) and MIN_BPM <= value <= MAX_BPM):
        raise ValueError(f"tempo must be {MIN_BPM:g} to {MAX_BPM:g} bpm, not {bpm!r}")
    return value


def _check_sample_rate(sample_rate: int) -> int:
    try:
        rate = operator.index(sample_rate)
    except TypeError as e:
        raise ValueError(f"sample_rate must be a whole number of frames per second, not {sample_rate!r}") from e
    if rate <= 0:
        raise ValueError(f"sample_rate must be positive, not {sample_rate}")
    return rate


class _StepGrid(abc.ABC):
    """What both clocks share: steps handed out to the conductor, never going back within a run.

    A subclass provides ``_grid_ticks(frame)`` (the song position in ticks at ``frame`` for the
    current run, or None) and ``_tick_frame(tick)`` (the frame of a song tick in the current run,
    or None); ``_announced`` is the last (step, frame) handed out, None after the position moved.
    """

    _announced: tuple[int, int] | None = None

    @abc.abstractmethod
    def _grid_ticks(self, frame: int) -> Fraction | float | None:
        """The song position in ticks at ``frame`` in the current run, or None."""

    @abc.abstractmethod
    def _tick_frame(self, tick: int) -> int | None:
        """The frame of song tick ``tick`` in the current run, or None."""

    def step_frame(self, step: int) -> int | None:
        """The frame of 16th step ``step`` in the current run; None when it cannot be told."""
        return self._tick_frame(TICKS_PER_STEP * int(step))

    def _first_step_at(self, frame: int) -> tuple[int, int] | None:
        """The first step whose frame is >= ``frame``, by the clock alone (no memory)."""
        ticks = self._grid_ticks(frame)
        if ticks is None:
            return None
        step = math.ceil(ticks / TICKS_PER_STEP)
        step_frame = self._tick_frame(TICKS_PER_STEP * step)
        while step_frame is not None and step_frame < frame:  # rounding in a prediction
            step += 1
            step_frame = self._tick_frame(TICKS_PER_STEP * step)
        if step_frame is None:
            return None
        while True:
            earlier = self._tick_frame(TICKS_PER_STEP * (step - 1))
            if earlier is None or earlier < frame:
                return step, step_frame
            step, step_frame = step - 1, earlier

    def next_step(self, frame: int) -> tuple[int, int] | None:
        """The first step at or after ``frame``: ``(step, step_frame)``, step_frame >= frame.

        None when the clock is stopped (or, following, before the tempo is known). The step number
        never goes back within a run of the clock, and a step already handed out keeps its number
        when the clock corrects itself: after this returned ``(k, f)``, a call with a frame <= ``f``
        returns step ``k`` again (its frame refreshed, and never before the frame asked about), and
        a call with a later frame returns a step > ``k``. So a conductor that polls with increasing
        frames and plays a step once its frame falls before the end of the block it prepares plays
        every step once, in order. Use :meth:`step_frame` and :meth:`position_steps` to look
        without moving this memory; start(), continue_() and (following) Start, Continue, Stop and
        Song Position clear it.
        """
        frame = int(frame)
        first = self._first_step_at(frame)
        if first is None:
            return None
        if self._announced is None:
            step = first[0]
        else:
            last_step, last_frame = self._announced
            step = last_step if frame <= last_frame else max(first[0], last_step + 1)
        step_frame = self._tick_frame(TICKS_PER_STEP * step)
        if step_frame is None:
            return None
        result = (step, max(step_frame, frame))
        self._announced = result
        return result

    def next_step_after(self, step: int, not_before_frame: int | None = None) -> tuple[int, int] | None:
        """The step after ``step``, the one the conductor just played: ``(step + 1, frame)``.

        With ``not_before_frame``, the first step after ``step`` whose frame is >= it instead (a
        conductor that fell behind skips the steps it is too late for). Without it the frame may lie
        in the past; the caller decides whether to play the step late. None when stopped or unknown.
        """
        nxt = int(step) + 1
        if not_before_frame is not None:
            first = self._first_step_at(int(not_before_frame))
            if first is None:
                return None
            nxt = max(nxt, first[0])
        step_frame = self._tick_frame(TICKS_PER_STEP * nxt)
        if step_frame is None:
            return None
        self._announced = (nxt, step_frame)
        return nxt, step_frame


class _Segment(NamedTuple):
    frame: int  # first frame of the segment
    ticks: Fraction  # song position at ``frame``, in ticks
    rate: Fraction | None  # ticks per frame; None while stopped


class InternalClock(_StepGrid):
    """A steady clock: runs from ``start_frame`` at ``bpm``; sends nothing itself.

    The host sends MIDI clock (0xF8) at the frames :meth:`ticks_between` gives. Tick ``n`` falls on
    the frame during which the song position passes ``n`` ticks: the frame ``f`` with
    position(f) <= n < position(f + 1), computed exactly (``fractions.Fraction``) from the last tempo
    change, so there is no drift however long the clock runs. A tempo is taken as the decimal number
    it prints as (133.7 bpm is exactly 1337/10).

    Parameters
    ----------
    sample_rate : int
        Audio frames per second.
    bpm : float
        Quarter notes per minute, 20 to 400.
    start_frame : int
        Absolute audio frame of song position 0 (tick 0, step 0).

    Calls that change the clock (set_bpm, stop, start, continue_) take the frame they happen at;
    frames must not go back before the last change (ValueError).
    """

    def __init__(self, sample_rate: int, bpm: float = 120.0, start_frame: int = 0):
        self.sample_rate = _check_sample_rate(sample_rate)
        self._bpm = check_bpm(bpm)
        self._rate = self._ticks_per_frame(self._bpm)
        self.start_frame = int(start_frame)  # the frame the current run started (or continued) at
        self._segments: list[_Segment] = [_Segment(self.start_frame, Fraction(0), self._rate)]
        self._run_index = 0  # index in _segments of the current run's first segment
        self._announced = None

    # -- state ---------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._segments[-1].rate is not None

    @property
    def bpm(self) -> float:
        """The tempo set last, quarter notes per minute."""
        return self._bpm

    def _ticks_per_frame(self, bpm: float) -> Fraction:
        return Fraction(str(bpm)) * TICKS_PER_QUARTER / (SECONDS_PER_MINUTE * self.sample_rate)

    def _append(self, segment: _Segment) -> None:
        last = self._segments[-1]
        if segment.frame < last.frame:
            raise ValueError(f"the clock cannot change at frame {segment.frame}, before its last change "
                             f"at frame {last.frame}; give frames in order")
        if segment.frame == last.frame:  # two changes at one frame: the later one wins
            self._segments[-1] = segment
        else:
            self._segments.append(segment)
        if len(self._segments) > MAX_SEGMENTS:
            del self._segments[0]
            self._run_index = max(self._run_index - 1, 0)

    def _ticks_at(self, frame: int) -> Fraction | None:
        """The exact song position (ticks) at ``frame`` from the tempo map; None while stopped."""
        for segment in reversed(self._segments):
            if segment.frame <= frame:
                if segment.rate is None:
                    return None
                return segment.ticks + (frame - segment.frame) * segment.rate
        return None  # before the clock's (remembered) history

    # -- changes -------------------------------------------------------------------------------
    def set_bpm(self, bpm: float, frame: int) -> None:
        """A new tempo from ``frame`` on; the song position runs on from where it is (no jump).

        While stopped, the tempo applies from the next start() or continue_().
        """
        self._bpm = check_bpm(bpm)
        self._rate = self._ticks_per_frame(self._bpm)
        frame = int(frame)
        if not self.running:
            if frame < self._segments[-1].frame:
                raise ValueError(f"set_bpm at frame {frame}, before the clock stopped at frame "
                                 f"{self._segments[-1].frame}; give frames in order")
            return
        ticks = self._ticks_at(frame)
        self._append(_Segment(frame, ticks if ticks is not None else self._segments[-1].ticks, self._rate))

    def stop(self, frame: int) -> None:
        """Stop at ``frame``: the position freezes there (nothing happens when already stopped)."""
        if not self.running:
            return
        frame = int(frame)
        ticks = self._ticks_at(frame)
        self._append(_Segment(frame, ticks if ticks is not None else self._segments[-1].ticks, None))
        self._announced = None

    def start(self, frame: int) -> None:
        """Start from song position 0 at ``frame`` (from the top, running or not)."""
        self._run(int(frame), Fraction(0))

    def continue_(self, frame: int) -> None:
        """Resume at ``frame`` from where the clock stopped (nothing happens when running)."""
        if self.running:
            return
        self._run(int(frame), self._segments[-1].ticks)

    def _run(self, frame: int, ticks: Fraction) -> None:
        self._append(_Segment(frame, ticks, self._rate))
        self._run_index = len(self._segments) - 1
        self.start_frame = frame
        self._announced = None

    # -- questions -------------------------------------------------------------------------------
    def ticks_between(self, start: int, end: int) -> list[tuple[int, int]]:
        """Every clock tick with ``start <= frame < end`` while running: ``[(tick, frame), ...]``.

        ``tick`` counts from song position 0 (it runs on after continue_(), restarts at start()).
        Adjacent windows ([a, b), then [b, c)) give each tick exactly once.
        """
        start, end = int(start), int(end)
        ticks: list[tuple[int, int]] = []
        for i, segment in enumerate(self._segments):
            if segment.rate is None:
                continue
            segment_end = self._segments[i + 1].frame if i + 1 < len(self._segments) else end
            lo, hi = max(start, segment.frame), min(end, segment_end)
            if lo >= hi:
                continue
            tick = math.ceil(segment.ticks + (lo - segment.frame) * segment.rate)
            while True:
                frame = segment.frame + (tick - segment.ticks) // segment.rate
                if frame >= hi:
                    break
                ticks.append((tick, int(frame)))
                tick += 1
        return ticks

    def _run_segments(self) -> list[_Segment]:
        return self._segments[self._run_index:] if self.running else []

    def _grid_ticks(self, frame: int) -> Fraction | None:
        run = self._run_segments()
        if not run:
            return None
        if frame < run[0].frame:
            return run[0].ticks  # the run starts later: its first step is the next one
        return self._ticks_at(frame)

    def _tick_frame(self, tick: int) -> int | None:
        for segment in reversed(self._run_segments()):
            if segment.ticks <= tick:
                return int(segment.frame + (tick - segment.ticks) // segment.rate)
        return None  # not running, or before the current run

    def position_steps(self, frame: int) -> float | None:
        """The song position at ``frame`` in 16ths (fractional: 2.5 is halfway from step 2 to 3).

        None where the clock was stopped at ``frame`` (or ``frame`` is before its history).
        """
        ticks = self._ticks_at(int(frame))
        return None if ticks is None else float(ticks / TICKS_PER_STEP)


class ClockFollower(_StepGrid):
    """Follows an external MIDI clock: 0xF8 ticks, 0xFA Start, 0xFB Continue, 0xFC Stop, 0xF2 SPP.

    Messages are stamped with the audio frame the host saw them at, which is jittery (quantised to
    audio periods of 64-256 frames, sometimes several ticks bunched on one frame). Every tick, the
    follower fits a least-squares line, frame = a + b * (tick count), through the last
    ``WINDOW_TICKS`` ticks at most (four beats); b gives the tempo and the line the phase. A tick
    further from the line than ``OUTLIER_SIGMAS`` times the jitter (measured robustly, from the
    median residual) is set aside (a bunched or late arrival); ``CHANGE_TICKS`` such ticks in a
    row on the same side mean the tempo (or phase) jumped, and the line starts again from them.
    When the ticks on the line drift to one side of it (a tempo ramp: the running mean residual is
    significant), the window drops its older half. A gap of more than ``MAX_TICK_GAP_SECONDS``
    between ticks starts the estimator afresh; predictions expire PREDICTION_TICKS tick periods
    after the last tick (a clock that stops ticking stops the model within an 8th, its Stop lost
    or not).

    Measured over 20 seeds on a synthetic 120 bpm clock at 48 kHz whose arrivals are dithered onto
    128-frame periods (the set-up of tests/test_clock.py): after two beats the tempo is within
    0.15 bpm and the predicted frame of the next step within 22 frames p99 (47 at worst), bunched
    arrivals included; a jump to 90 bpm is followed (0.5 bpm and 64 frames, for good) within 3-35
    ticks, 9 typically; on a ramp of 20 bpm over 8 beats predictions are off by about 210 frames
    (p99) and the tempo lags by up to 6 bpm. A tick costs about 50 us.

    MIDI semantics: after Start the next tick is song position 0; Stop freezes the position;
    Continue resumes with the tick after the last one; Song Position (in 16ths) moves the position
    while stopped (ignored while running). Ticks while stopped set the tempo only (many devices
    send clock always), and they let the first step after Start be predicted before its tick comes.

    Parameters
    ----------
    sample_rate : int
        Audio frames per second.
    latency_frames : int
        Subtracted from every tick's frame: the host's known input latency, if it has one. A
        constant latency cannot be seen in the ticks; uncorrected, it shifts every prediction late.
    """

    def __init__(self, sample_rate: int, *, latency_frames: int = 0):
        self.sample_rate = _check_sample_rate(sample_rate)
        self.latency_frames = int(latency_frames)
        self.running = False
        self._gap_frames = MAX_TICK_GAP_SECONDS * self.sample_rate
        self._floor_frames = OUTLIER_FLOOR_SECONDS * self.sample_rate
        self._arrivals = 0  # clock ticks received (running or not): the next one's count
        self._zero_arrival = 0  # the count of the tick at song position 0 (while running)
        self._stopped_ticks = 0  # the song position (ticks) the next tick takes, while stopped
        self._last_tick_frame: int | None = None
        self._window: deque[tuple[int, int]] = deque(maxlen=WINDOW_TICKS)  # (count, frame)
        self._pending: list[tuple[int, int, float]] = []  # outliers set aside: (count, frame, residual)
        self._line: tuple[int, float, float] | None = None  # frame ~ c + b * (count - k_ref): (k_ref, c, b)
        self._jitter_frames: float | None = None  # the arrivals' deviation from the line (robust)
        self._locked = False  # a tempo was told since the last cold start
        self._bias_frames = 0.0  # running mean residual of the ticks on the line
        self._bias_floor_frames = BIAS_FLOOR_SECONDS * self.sample_rate
        self._reported_bpm: float | None = None
        self._announced = None
        self.lost_ticks = 0  # ticks inferred lost in transport (counted into the song position)
        self.repeated_ticks = 0  # ticks inferred received twice (taken out of the song position)

    # -- input -----------------------------------------------------------------------------------
    def feed(self, frame: int, message) -> str | None:
        """One MIDI message (bytes, a list or tuple of ints, or a mido Message) seen at ``frame``.

        Returns 'start', 'stop', 'continue', 'position' (Song Position, while stopped), 'tempo' (a
        tick after which the tempo estimate moved by more than TEMPO_REPORT_BPM since it was last
        reported, or became known) or None (anything else, including what is not MIDI).
        """
        data = _message_bytes(message)
        if not data:
            return None
        status = data[0]
        if len(data) == 1:
            if status == CLOCK_TICK:
                return self._tick(int(frame) - self.latency_frames)
            if status == CLOCK_START:
                self.running = True
                self._zero_arrival = self._arrivals
                self._announced = None
                return "start"
            if status == CLOCK_CONTINUE and not self.running:
                self.running = True
                self._zero_arrival = self._arrivals - self._stopped_ticks
                self._announced = None
                return "continue"
            if status == CLOCK_STOP and self.running:
                self.running = False
                self._stopped_ticks = self._arrivals - self._zero_arrival
                self._announced = None
                return "stop"
            return None
        if status == SONG_POSITION and len(data) == 3 and data[1] < 0x80 and data[2] < 0x80 and not self.running:
            self._stopped_ticks = TICKS_PER_STEP * (data[1] | data[2] << DATA_BITS)
            self._announced = None
            return "position"
        return None

    def _tick(self, frame: int) -> str | None:
        count = self._arrivals
        self._arrivals += 1
        last = self._last_tick_frame
        if last is not None:
            if abs(frame - last) > self._gap_frames:
                self._restart_estimator()  # a gap (or a jump back): the old line says nothing now
            elif frame < last:
                frame = last  # out of order by a little: as if bunched with the one before
        self._last_tick_frame = frame
        self._add(count, frame)
        if len(self._window) >= MIN_TEMPO_TICKS:
            self._locked = True  # from now on a restart on a tempo change keeps telling the tempo
        bpm = self.bpm
        if bpm is None:
            return None
        if self._reported_bpm is None or abs(bpm - self._reported_bpm) > TEMPO_REPORT_BPM:
            self._reported_bpm = bpm
            return "tempo"
        return None

    # -- the estimator ------------------------------------------------------------------------------
    def _restart_estimator(self) -> None:
        self._locked = False
        self._window.clear()
        self._pending.clear()
        self._line = None
        self._jitter_frames = None
        self._bias_frames = 0.0

    def _predict(self, count: float) -> float:
        k_ref, c, b = self._line
        return c + b * (count - k_ref)

    def _threshold_frames(self) -> float:
        return max(OUTLIER_SIGMAS * self._jitter_frames, self._floor_frames)

    def _add(self, count: int, frame: int) -> None:
        if self._jitter_frames is None:  # too few ticks to tell an outlier: take them all
            self._window.append((count, frame))
            self._fit()
            return
        residual = frame - self._predict(count)
        if abs(residual) <= self._threshold_frames():
            self._pending.clear()  # the ones set aside were bunched or late: forget them
            self._window.append((count, frame))
            if self._drifting(residual):
                # The ticks drift off the line on one side (a tempo ramp): the window's older part no
                # longer fits; keep its newer half.
                keep = max(MIN_GATE_TICKS, len(self._window) // 2)
                self._window = deque(list(self._window)[-keep:], maxlen=WINDOW_TICKS)
            self._fit()
            return
        self._pending.append((count, frame, residual))
        if len(self._pending) < CHANGE_TICKS:
            return
        lost, strays = self._lost_ticks()
        if lost:
            # The ticks kept their tempo but came m tick periods late: m ticks were lost on the way
            # (JACK drops the MIDI of a cycle a client misses). The song position counts them. m < 0:
            # they came |m| periods early, so |m| ticks were counted twice (a client JACK runs again
            # after a late cycle can read the same MIDI twice); the count drops them. A stray (the
            # first set aside, off the whole periods) is such a repeat itself: left out.
            self._arrivals += lost
            if lost > 0:
                self.lost_ticks += lost
            else:
                self.repeated_ticks -= lost
            self._window.extend((k + lost, f) for k, f, _ in self._pending[strays:])
            self._pending.clear()
            self._fit()
            return
        if all(r > 0 for _, _, r in self._pending) or all(r < 0 for _, _, r in self._pending):
            # The ticks left the line for good: a new tempo (or phase) from the last tick on it.
            junction = self._window[-1]
            self._window.clear()
            self._window.append(junction)
            self._jitter_frames = None
            self._bias_frames = 0.0
        # (Scattered both ways, they mean the jitter grew: the line takes them in.)
        self._window.extend((k, f) for k, f, _ in self._pending)
        self._pending.clear()
        self._fit()

    def _lost_ticks(self) -> tuple[int, int]:
        """(m, 0) with m >= 1 when every tick set aside lies m tick periods after the line (within a
        quarter period): ticks lost on the way, not a new tempo; m <= -1 when they lie |m| periods
        before it: ticks counted twice. (m, 1) when the first one set aside lies less than a period
        before the line and the others |m| periods before it: that first one is a tick read again
        a little after the original (a period or two of the audio host: at 140 bpm a 256-frame
        repeat is 0.3 of a tick early, too far from a whole period to be told the first way), and
        the rest came after it. (0, 0) otherwise."""
        period = self._line[2]
        if not period > 0:
            return 0, 0
        pending = self._pending
        m = self._whole_periods_off(pending, period)
        if m:
            return m, 0
        if len(pending) >= 3 and -1.0 < pending[0][2] / period < 0.0:
            m = self._whole_periods_off(pending[1:], period)
            if m < 0:
                return m, 1
        return 0, 0

    @staticmethod
    def _whole_periods_off(pending: list[tuple[int, int, float]], period: float) -> int:
        # The ticks set aside keep the line's tempo (their own spacing is about one period each) ...
        for (k0, f0, _), (k1, f1, _) in zip(pending, pending[1:]):
            if k1 != k0 + 1 or abs((f1 - f0) / period - 1.0) > LOST_TICK_TOLERANCE:
                return 0
        # ... and all lie the same whole number of periods off it.
        ratios = [r / period for _, _, r in pending]
        m = round(ratios[0])
        if not 1 <= abs(m) <= MAX_LOST_TICKS:
            return 0
        if all(abs(x - m) < LOST_TICK_TOLERANCE for x in ratios):
            return m
        return 0

    def _drifting(self, residual: float) -> bool:
        """Track the mean residual (frames) of the ticks on the line; True when it is significant
        (and it then starts again from 0)."""
        self._bias_frames += BIAS_SMOOTHING * (residual - self._bias_frames)
        # A running mean of white noise deviates by jitter * sqrt(a / (2 - a)).
        limit = max(BIAS_SIGMAS * self._jitter_frames * math.sqrt(BIAS_SMOOTHING / (2 - BIAS_SMOOTHING)),
                    self._bias_floor_frames)
        if abs(self._bias_frames) > limit:
            self._bias_frames = 0.0
            return True
        return False

    def _fit(self) -> None:
        """The line through the window; with enough ticks, its jitter (robust: from the median
        residual), dropping the ticks far off it and fitting again."""
        points = list(self._window)
        line = _fit_line(points)
        self._line = line
        if line is None or len(points) < MIN_GATE_TICKS:
            self._jitter_frames = None
            return
        for _ in range(TRIM_PASSES):
            k_ref, c, b = line
            residuals = [abs(f - c - b * (k - k_ref)) for k, f in points]
            jitter = MAD_TO_SIGMA * sorted(residuals)[len(residuals) // 2]
            limit = max(OUTLIER_SIGMAS * jitter, self._floor_frames)
            kept = [p for p, r in zip(points, residuals) if r <= limit]
            if len(kept) == len(points) or len(kept) < MIN_GATE_TICKS // 2:
                break
            points = kept
            line = _fit_line(points)
        if len(points) < len(self._window):
            self._window = deque(points, maxlen=WINDOW_TICKS)
        self._line = line
        self._jitter_frames = jitter

    # -- questions ---------------------------------------------------------------------------------
    @property
    def bpm(self) -> float | None:
        """The smoothed tempo, quarter notes per minute; None until MIN_TEMPO_TICKS ticks came after a
        cold start (the first ticks, or a gap), and None when the estimate lies outside 20-400 bpm.
        After a tempo change the line restarts from a few ticks and the tempo is told from them."""
        if self._line is None or (len(self._window) < MIN_TEMPO_TICKS and not self._locked):
            return None
        frames_per_tick = self._line[2]
        if frames_per_tick <= 0:
            return None
        bpm = SECONDS_PER_MINUTE * self.sample_rate / (TICKS_PER_QUARTER * frames_per_tick)
        return bpm if MIN_BPM <= bpm <= MAX_BPM else None

    def _usable(self, frame: float) -> bool:
        """Whether predictions hold at ``frame``: running, tempo known, ``frame`` at most
        PREDICTION_TICKS tick periods (and MAX_TICK_GAP_SECONDS) past the last tick."""
        if not (self.running and self.bpm is not None and self._last_tick_frame is not None):
            return False
        horizon = min(self._gap_frames, PREDICTION_TICKS * self._line[2])
        return frame - self._last_tick_frame <= horizon

    def _grid_ticks(self, frame: int) -> float | None:
        if not self._usable(frame):
            return None
        k_ref, c, b = self._line
        return (frame - c) / b + k_ref - self._zero_arrival

    def _tick_frame(self, tick: int) -> int | None:
        if not self.running or self.bpm is None:
            return None
        frame = self._predict(tick + self._zero_arrival)
        if not self._usable(frame):
            return None
        return int(round(frame))

    def position_steps(self, frame: int) -> float | None:
        """The predicted song position at ``frame`` in 16ths; None when stopped or unknown."""
        ticks = self._grid_ticks(int(frame))
        return None if ticks is None else ticks / TICKS_PER_STEP

    def step_frame(self, step: int) -> int | None:
        """The predicted frame of 16th step ``step``; None when stopped, unknown, or further than
        PREDICTION_TICKS tick periods past the last tick (predictions are for the near future)."""
        return super().step_frame(step)


def _fit_line(points: deque[tuple[int, int]]) -> tuple[int, float, float] | None:
    """Least squares frame = c + b * (count - k_ref) through (count, frame) points; k_ref = the last count."""
    n = len(points)
    if n < 2:
        return None
    k_ref, f_ref = points[-1]
    sx = sy = sxx = sxy = 0.0
    for k, f in points:
        x, y = k - k_ref, f - f_ref
        sx += x
        sy += y
        sxx += x * x
        sxy += x * y
    mx, my = sx / n, sy / n
    var = sxx - n * mx * mx
    if var <= 0:
        return None
    b = (sxy - n * mx * my) / var
    return k_ref, f_ref + my - b * mx, b
