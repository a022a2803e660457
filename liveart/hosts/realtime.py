"""What a real-time process asks of the operating system, where it is allowed: a real-time
priority for a thread, and CPUs kept out of deep sleep. Nothing here needs more than the standard
library, so the JACK test harness uses it too."""

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
