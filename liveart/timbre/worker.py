"""The timbre decoder off the audio path: what the engine's compiled block asks of the model, served.

The block (:mod:`liveart.realtime.block`) never calls the model. At each control hop boundary it
posts the voices it expects at the next one (a request slab), and takes the newest decoded frames
the worker has finished (a result slab); a note-on takes its first frame from an onset table the
worker keeps for every timbre channel (all 128 notes x VELOCITY_LAYERS velocities at the channel's
place), remade when the block says a channel's place moved. The slabs are preallocated
(:class:`TimbrePools`) and change hands through lock-free rings, so neither side waits or locks.

:class:`TimbreService` does the serving: decode a request, build the voices' wavetables, remake the
onset tables. Offline the engine calls it itself each time the block posts (the sound of a worker
that is never late); live, :class:`TimbreWorker` calls it on its own thread. When the worker has
not finished in time, the voices keep their last parameters (no silence, no click), or take the
newest frames it has finished, a hop or more old, and the engine counts them (``timbre_late``): a
slow decoder makes the sound lag, never stop. onnxruntime releases the GIL while it decodes.
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections import deque

import numpy as np

from ..realtime.block import (M_BOUNDARY, M_COUNT, M_PLACES, M_WIDTH, R_FREQ, R_NOTE, R_OFF, R_ON, R_SLOT, R_T_ON,
                              R_VELOCITY, R_Z, read_request)
from ..realtime.rings import Ring
from ..synth.bank import build_tables
from ..synth.presets import N_HARMONICS, N_NOISE_BANDS
from ..synth.voices import TABLE_SIZE
from .frames import ONSET_SECONDS

VELOCITY_LAYERS = np.array([24, 48, 72, 96, 120])
RESULT_SLABS = 4
ONSET_SLABS = 3
TIMING_HISTORY = 4096


def _pool(slabs: int, free=range(0)) -> tuple[Ring, Ring]:
    """A pool's two rings: free slab indices (to the producer) and ready ones (to the consumer)."""
    capacity = 1 << max(1, (slabs - 1).bit_length())
    free_ring, ready_ring = Ring(capacity, 1), Ring(capacity, 1)
    for i in free:
        free_ring.push([i])
    return free_ring, ready_ring


class TimbrePools:
    """The slabs the block and the worker share, and the rings they change hands through.

    The request (block → worker, one slab under a sequence lock): rows of (slot, note-on frame, note,
    velocity, seconds on, seconds off, cycles per frame, place...) with meta (boundary, count) and every
    channel's place at the boundary. Results (worker → block): per voice its slot and note-on frame, harmonics,
    noise, amp (the model's level) and wavetable. Onset tables (worker → block): (16, 128, layers)
    frames; slab 0 is current at the start."""

    def __init__(self, latent: int, voices: int):
        f32 = np.float32
        layers = len(VELOCITY_LAYERS)
        self.latent = latent
        self.req_seq = np.zeros(16, np.int64)
        self.req_rows = np.zeros((voices, R_Z + latent))
        self.req_meta = np.zeros(M_WIDTH, np.int64)
        self.req_places = np.zeros((16, latent))
        self.res_h = np.zeros((RESULT_SLABS, voices, N_HARMONICS), f32)
        self.res_noise = np.zeros((RESULT_SLABS, voices, N_NOISE_BANDS), f32)
        self.res_amp = np.zeros((RESULT_SLABS, voices), f32)
        self.res_tables = np.zeros((RESULT_SLABS, voices, TABLE_SIZE + 1), f32)
        self.res_ids = np.zeros((RESULT_SLABS, voices, 2), np.int64)
        self.res_meta = np.zeros((RESULT_SLABS, M_WIDTH), np.int64)
        self.res_free, self.res_ready = _pool(RESULT_SLABS, range(RESULT_SLABS))
        self.on_h = np.zeros((ONSET_SLABS, 16, 128, layers, N_HARMONICS), f32)
        self.on_noise = np.zeros((ONSET_SLABS, 16, 128, layers, N_NOISE_BANDS), f32)
        self.on_amp = np.zeros((ONSET_SLABS, 16, 128, layers), f32)
        self.on_free, self.on_ready = _pool(ONSET_SLABS, range(1, ONSET_SLABS))
        self.on_places = np.full((ONSET_SLABS, 16, latent), np.nan)  # the places each slab was made at


class TimbreService:
    """Serves the block's requests with ``model`` (a :class:`~liveart.timbre.model.TimbreModel`)."""

    def __init__(self, model, pools: TimbrePools, sample_rate: int, enabled: np.ndarray,
                 slowdown_seconds: float = 0.0):
        self.model = model
        self.pools = pools
        self.sample_rate = int(sample_rate)
        self.enabled = np.asarray(enabled, bool)
        self.slowdown_seconds = slowdown_seconds  # tests: a decoder this much slower than it is
        self.decode_seconds: deque[float] = deque(maxlen=TIMING_HISTORY)
        self.table_seconds: deque[float] = deque(maxlen=TIMING_HISTORY)
        self.failures = 0  # requests whose decode raised (the voices kept their parameters)
        self.error: str | None = None  # the last such error, for the host to report
        self._made = 0  # the onset slab made last
        self._wanted: np.ndarray | None = None  # places to remake the onset tables at, when a slab frees up
        self._served = 0  # the sequence count of the request served last
        self._places_seen = 0  # onset-table requests seen
        self._rows = np.zeros_like(pools.req_rows)
        self._meta = np.zeros_like(pools.req_meta)
        self._places = np.zeros_like(pools.req_places)
        # Compiled now, not on the worker's first request (a compile holds the GIL for seconds).
        read_request(pools.req_seq, pools.req_rows, pools.req_meta, pools.req_places, self._rows, self._meta,
                     self._places)
        pools.on_free.push(pools.on_free.pop())

    def make_first_tables(self, places: np.ndarray) -> None:
        """The onset tables for the channels' first places, into slab 0 (before the block runs)."""
        self._make_tables(0, np.asarray(places, np.float64))

    def serve(self) -> bool:
        """Serve the newest request, if it is new: its voices' frames, and onset tables if any request
        since the last asked for them. False when there was nothing to do."""
        p = self.pools
        while True:
            seq = read_request(p.req_seq, p.req_rows, p.req_meta, p.req_places, self._rows, self._meta, self._places)
            if seq >= 0:
                break
            time.sleep(0)  # being written: read again in a moment
        if seq == self._served and self._wanted is None:
            return False
        try:
            if seq != self._served:
                self._served = seq
                if self._meta[M_PLACES] != self._places_seen:
                    self._places_seen = int(self._meta[M_PLACES])
                    self._wanted = self._places.copy()
                if self._meta[M_COUNT] > 0:
                    self._decode()
            if self._wanted is not None:
                self._remake()
        except Exception as e:  # the caller goes on; the host reports failures and the last error
            self.failures += 1
            self.error = f"{type(e).__name__}: {e}"
        return True

    def _decode(self) -> None:
        p = self.pools
        started = time.perf_counter()
        n = int(self._meta[M_COUNT])
        rows = self._rows[:n]
        h, noise, amp = self.model.frames(rows[:, R_Z:].astype(np.float32), rows[:, R_NOTE].astype(np.int64),
                                          rows[:, R_VELOCITY].astype(np.int64), rows[:, R_ON], rows[:, R_OFF],
                                          self.sample_rate)
        if self.slowdown_seconds:
            time.sleep(self.slowdown_seconds)
        free = p.res_free.pop()
        if free is None:  # the block has not taken the results before: it takes the newest anyway
            return
        r = int(free[0])
        p.res_h[r, :n] = h
        p.res_noise[r, :n] = noise
        p.res_amp[r, :n] = amp
        p.res_tables[r, :n] = build_tables(h, rows[:, R_FREQ])
        p.res_ids[r, :n, 0] = rows[:, R_SLOT]
        p.res_ids[r, :n, 1] = rows[:, R_T_ON]
        p.res_meta[r, M_BOUNDARY] = self._meta[M_BOUNDARY]
        p.res_meta[r, M_COUNT] = n
        p.res_ready.push([r])
        self.decode_seconds.append(time.perf_counter() - started)

    def _remake(self) -> None:
        p = self.pools
        free = p.on_free.pop()
        if free is None:  # the block has not taken the last tables yet: remake when it has
            return
        places, self._wanted = self._wanted, None
        self._make_tables(int(free[0]), places)
        p.on_ready.push([int(free[0])])

    def _make_tables(self, slab: int, places: np.ndarray) -> None:
        """Onset tables at ``places`` into ``slab``: channels at the place of the slab made last are
        copied from it, the others decoded."""
        p = self.pools
        started = time.perf_counter()
        layers = len(VELOCITY_LAYERS)
        last = self._made
        done: list[int] = []  # channels of this slab made now
        for c in np.flatnonzero(self.enabled):
            if np.array_equal(places[c], p.on_places[slab, c]):
                continue
            same = [k for k in done if np.array_equal(places[c], places[k])]
            if same:  # another channel at the same place (channels often share an anchor)
                p.on_h[slab, c] = p.on_h[slab, same[0]]
                p.on_noise[slab, c] = p.on_noise[slab, same[0]]
                p.on_amp[slab, c] = p.on_amp[slab, same[0]]
            elif slab != last and np.array_equal(places[c], p.on_places[last, c]):
                p.on_h[slab, c] = p.on_h[last, c]
                p.on_noise[slab, c] = p.on_noise[last, c]
                p.on_amp[slab, c] = p.on_amp[last, c]
            else:
                n = np.repeat(np.arange(128), layers)
                v = np.tile(VELOCITY_LAYERS, 128)
                z = np.repeat(places[c][None, :].astype(np.float32), len(n), axis=0)
                h, nz, a = self.model.frames(z, n, v, np.full(len(n), ONSET_SECONDS), np.full(len(n), -1.0),
                                             self.sample_rate)
                p.on_h[slab, c] = h.reshape(128, layers, -1)
                p.on_noise[slab, c] = nz.reshape(128, layers, -1)
                p.on_amp[slab, c] = a.reshape(128, layers)
                done.append(int(c))
            p.on_places[slab, c] = places[c]
        self._made = slab
        self.table_seconds.append(time.perf_counter() - started)

    def idle(self) -> bool:
        """Nothing posted is left to serve."""
        return self.pools.req_seq[0] == self._served and self._wanted is None


class TimbreWorker:
    """Serves the block from its own thread (the live host's). Pass it as the engine's ``timbre``;
    ``close()`` (or a ``with`` block) stops it."""

    asynchronous = True
    POLL_SECONDS = 0.02  # not woken, it looks for work this often (onset tables waiting for a free slab)

    def __init__(self, model, sample_rate: int, slowdown_seconds: float = 0.0):
        self.model = model
        self.sample_rate = int(sample_rate)
        self.anchors = model.anchors
        self.latent = model.latent
        self.latent_low, self.latent_high = model.latent_low, model.latent_high
        self.held_out_programs = model.held_out_programs
        self.slowdown_seconds = slowdown_seconds
        self.service: TimbreService | None = None
        self.thread_setup = None  # called first on the worker's thread (the live host raises its priority)
        # Woken by a byte down a pipe: from Python (wake()), or from the compiled JACK callback, which
        # writes to ``wake_fd`` when its block has asked for something (a write to a pipe never waits).
        self._wake_r, self.wake_fd = os.pipe()
        os.set_blocking(self.wake_fd, False)
        self._running = False
        self._busy = False  # serving (wait_idle waits for it)
        self._thread: threading.Thread | None = None

    def start(self, service: TimbreService) -> None:
        """Serve ``service`` (made by the engine, its first onset tables made) from now on."""
        service.slowdown_seconds = self.slowdown_seconds
        self.service = service
        self._running = True
        self._thread = threading.Thread(target=self._loop, name="liveart-timbre", daemon=True)
        self._thread.start()

    @property
    def failures(self) -> int:
        return self.service.failures if self.service else 0

    @property
    def error(self) -> str | None:
        return self.service.error if self.service else None

    @property
    def decode_seconds(self):
        return self.service.decode_seconds if self.service else deque()

    def wake(self) -> None:
        try:
            os.write(self.wake_fd, b"x")
        except OSError:  # the pipe is full of wake-ups: the worker is awake anyway
            pass

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Tests and offline checks: wait until everything posted has been served."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if self.service is None or (self.service.idle() and not self._busy):
                return True
            time.sleep(0.0002)
        return False

    def close(self) -> None:
        self._running = False
        self.wake()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        for fd in (self._wake_r, self.wake_fd):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _loop(self) -> None:
        if self.thread_setup is not None:
            self.thread_setup()
        while self._running:
            ready, _, _ = select.select([self._wake_r], [], [], self.POLL_SECONDS)
            if ready:
                try:
                    os.read(self._wake_r, 4096)
                except OSError:
                    return
            self._busy = True
            try:
                self.service.serve()
            finally:
                self._busy = False
