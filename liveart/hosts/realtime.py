"""What a real-time process asks of the operating system, where it is allowed: a real-time
priority for a thread, and CPUs kept out of deep sleep; and the MIDI that JACK2 hands a client twice.
Nothing here needs more than the standard library, so the JACK test harness uses it too."""

from __future__ import annotations

import os
import struct

HELPER_PRIORITY = 1  # the lowest real-time priority: under every JACK thread
CPU_DMA_LATENCY = "/dev/cpu_dma_latency"


def raise_priority(priority: int = HELPER_PRIORITY) -> bool:
    """Give the calling thread a real-time (round-robin) priority, where allowed; False otherwise."""
    if not hasattr(os, "sched_setscheduler"):
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(priority))  # 0: this thread (Linux)
    except (OSError, ValueError):
        return False
    return True


def hold_cpu_awake():
    """Ask Linux's PM QoS for a CPU wake-up latency of 0 while liveart plays (the request lasts as
    long as the returned file stays open), where allowed; None otherwise. Idle CPUs then poll instead
    of sleeping: on this project's VMs (the haltpoll idle driver) a halted CPU took long enough to
    wake that the 60-second JACK test saw 318 xruns idle and 30 with the request held."""
    try:
        f = open(CPU_DMA_LATENCY, "wb", buffering=0)
    except OSError:
        return None
    try:
        f.write(struct.pack("i", 0))
    except OSError:
        f.close()
        return None
    return f


class RepeatedMidi:
    """Tells the MIDI that JACK2 hands a client again after an xrun. JACK2 passes a receiver the
    sender's own output buffer (one connection: no copy), and that buffer holds what the sender
    wrote when it last ran. When a client misses a cycle's deadline, JACK2 can run the cycle again,
    and a receiver whose sender did not run again reads the same buffer a second time; a run that
    starts late can even read the next cycle's start as its own, so the repeat need not come with
    the same cycle start. Two rules, one call per process callback (:meth:`read`):

    - a callback that reads, message for message (the same bytes at the same offsets), the same
      non-empty list as the last callback that read any, if that was at most ``window`` callbacks
      before (empty ones between), is reading that buffer again: all of it is repeated (a real
      stream that sends exactly the same messages at exactly the same offsets within a few periods
      does not happen in music: a key pressed again needs its note-off between; only MIDI clock
      whose tick lasts exactly one to three periods, 39 to 117 bpm at 48 kHz and 1024 frames, would).
      The repeat seen in an experiment came in the very next callback; the window also covers a
      buffer read again after a callback that read nothing, a guess at the repeat a fresh-clone CI
      run on a VM with thousands of xruns a minute once let through (not a proven mechanism);
    - in a second run of a cycle (the same start as the callback before), a message equal to one
      already read in that cycle, at the same offset, is repeated (a buffer mixed from several
      senders, only some of which ran again).

    Holds at most ``capacity`` messages a cycle (a repeat past that many is not told). ``count``:
    the repeats dropped so far; ``moved``: those of them read with another cycle start than the
    first time (only the first rule tells those)."""

    def __init__(self, capacity: int = 256, window: int = 3):
        self.capacity = capacity
        self.window = window
        self.count = 0
        self.moved = 0
        self._cycle = None
        self._previous: list[tuple[int, bytes]] = []  # the last non-empty list read
        self._since = window + 1  # callbacks since it was read
        self._seen: list[tuple[int, bytes]] = []

    def read(self, start: int, incoming) -> list[tuple[int, bytes]]:
        """This callback's messages, ``incoming`` (offset, data) pairs read in a cycle starting at
        frame ``start``: the ones that are new, as (offset, bytes)."""
        messages = [(offset, bytes(data)) for offset, data in incoming]
        self._since += 1
        again = False
        if messages:  # the buffer a recent callback read, read again?
            again = self._since <= self.window and messages == self._previous
            self._previous, self._since = messages, 0
        if again:
            self.count += len(messages)
        if start != self._cycle:  # a new cycle (or a late run that read a later start)
            if again:
                self.moved += len(messages)
            self._cycle = start
            self._seen = messages[: self.capacity]
            return [] if again else messages
        if again:
            return []
        seen = self._seen
        new = []
        for key in messages:
            if key in seen:
                self.count += 1
                continue
            new.append(key)
            if len(seen) < self.capacity:
                seen.append(key)
        return new
