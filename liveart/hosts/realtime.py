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
    """Tells the MIDI that JACK2 hands a client again. When a client misses a cycle's deadline,
    JACK2 can run the cycle again, and a receiver whose sender did not run again reads the same
    buffer a second time. Call :meth:`cycle` at the start of each process callback with the cycle's
    first frame, then :meth:`repeated` for each message read: True for a message equal to one already
    read in this cycle (the same bytes at the same offset) in an earlier run of it. Holds at most
    ``capacity`` messages a cycle (a repeat past that many is not told)."""

    def __init__(self, capacity: int = 256):
        self.capacity = capacity
        self._cycle = None
        self._rerun = False
        self._seen: list[tuple[int, bytes]] = []

    def cycle(self, start: int) -> None:
        self._rerun = start == self._cycle
        if not self._rerun:
            self._cycle = start
            self._seen.clear()

    def repeated(self, offset: int, message: bytes) -> bool:
        key = (offset, message)
        if self._rerun and key in self._seen:
            return True
        if len(self._seen) < self.capacity:
            self._seen.append(key)
        return False
