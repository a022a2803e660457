"""A fake backend: calls the live host's compiled cycle at chosen server frames, with chosen MIDI,
in the test's own thread. What real servers do to a client, a test does on purpose and exactly: a
cycle run late or skipped (the next start jumps), a cycle run again (the same start twice, or a late
run that read the next start), a MIDI buffer dropped or handed again, a flood, a port that goes
away. The same compiled code runs as under JACK (:mod:`liveart.realtime.jack` only adds reading and
writing the ports), so what is judged here is what a performer gets.
"""

from __future__ import annotations

import numpy as np

from . import callback as cb


class FakeBackend:
    """Cycles of ``engine`` (a :class:`~liveart.engine.Engine`) with the cycle state ``live``."""

    def __init__(self, engine, live: cb.LiveState, period: int = 128):
        self.engine = engine
        self.live = live
        self.period = period
        self.rows_in = np.zeros((256, cb.MSG), np.int64)
        self.rows_out = np.zeros((256, cb.MSG), np.int64)
        self.next_start = 0
        self.now_us = 0

    def cycle(self, midi=(), start: int | None = None, frames: int | None = None):
        """One callback at server frame ``start`` (default: the cycle after the last), with ``midi``
        as (offset, bytes) pairs. Returns (audio (frames, 2), [(offset, bytes) written out])."""
        frames = self.period if frames is None else frames
        start = self.next_start if start is None else start
        n = 0
        for offset, data in midi:
            data = bytes(data)
            self.rows_in[n] = [offset, len(data)] + list(data[:3]) + [0] * (3 - len(data[:3]))
            n += 1
        audio = np.zeros((frames, 2), np.float32)
        e = self.engine
        self.engine.reserve(max(frames, cb.MAX_CATCH_UP_FRAMES))
        count = cb.cycle(e.cfg, e.bank.voices, e.ch, e.s, e.tb, self.live.live, start & 0xFFFFFFFF, self.now_us,
                         frames, self.rows_in, n, audio, self.rows_out)
        self.next_start = start + frames
        self.now_us += int(1e6 * frames / e.sample_rate)
        out = [(int(r[0]), bytes(int(x) for x in r[2 : 2 + r[1]])) for r in self.rows_out[:count]]
        return audio, out

    def played(self) -> list[tuple[int, bytes]]:
        """What the cycle handed the take since the last call: (frame, message)."""
        return [(int(r[0]), bytes(int(x) for x in r[2 : 2 + r[1]])) for r in self.live.played.pop_many()]
