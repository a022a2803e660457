"""The timbre decoder off the audio path: a worker thread that decodes one control hop ahead.

The live host hands the engine a :class:`TimbreWorker` instead of a :class:`TimbreModel`. At each
control hop boundary the engine (on the audio thread) takes the frames the worker decoded for this
boundary and posts the voices it expects at the next one; it never waits. When the worker has not
finished in time, the voices keep their last parameters (no silence, no click), or take the newest
frames the worker has finished, a hop or more old, and ``EngineStats.timbre_late`` counts them: a
slow decoder makes the sound lag, never stop. A note-on takes its first frame from a table the worker
keeps for every timbre channel (all 128 notes x VELOCITY_LAYERS velocities at the channel's place),
remade when a channel's place moves; the decoded frames take over from the next boundary on.

The worker also builds the voices' wavetables (an inverse FFT each), so the audio thread only
starts ramps. Hand-over between the threads is by reference: the engine publishes a new request object, the
worker a new result object; neither holds a lock while the model runs. onnxruntime releases the GIL
while it decodes.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from .frames import ONSET_SECONDS
from ..synth.bank import build_tables
from .model import TimbreModel

VELOCITY_LAYERS = np.array([24, 48, 72, 96, 120])
TABLE_REFRESH_SECONDS = 0.02  # a moving place remakes its onset table at most this often
TIMING_HISTORY = 4096


@dataclass
class Request:
    boundary: int  # the frame these frames are for
    slots: np.ndarray
    t_on: np.ndarray  # the note-on frame of each slot's voice (identifies the voice)
    z: np.ndarray
    note: np.ndarray
    velocity: np.ndarray
    on_seconds: np.ndarray
    off_seconds: np.ndarray
    freq: np.ndarray  # cycles per frame, for the wavetables


@dataclass
class Result:
    boundary: int
    slots: np.ndarray
    t_on: np.ndarray
    harmonics: np.ndarray
    noise: np.ndarray
    amp: np.ndarray
    tables: np.ndarray  # the voices' wavetables, built here so the audio thread does not


class TimbreWorker:
    """Decodes ahead of need on its own thread. ``close()`` (or a ``with`` block) stops it."""

    asynchronous = True

    def __init__(self, model: TimbreModel, sample_rate: int, slowdown_seconds: float = 0.0):
        self.model = model
        self.sample_rate = int(sample_rate)
        self.anchors = model.anchors
        self.latent = model.latent
        self.latent_low, self.latent_high = model.latent_low, model.latent_high
        self.held_out_programs = model.held_out_programs
        self.slowdown_seconds = slowdown_seconds  # tests: a decoder this much slower than it is
        self.decode_seconds: deque[float] = deque(maxlen=TIMING_HISTORY)
        self.table_seconds: deque[float] = deque(maxlen=TIMING_HISTORY)
        self._request: Request | None = None
        self._result: Result | None = None
        self._targets: np.ndarray | None = None  # (16, latent) places the tables should be at
        self._enabled = np.zeros(16, bool)
        self._tables: tuple | None = None  # (harmonics, noise, amp) of shape (16, 128, layers, ...)
        self._table_places: np.ndarray | None = None
        self._wake = threading.Event()
        self._pending = False  # posted or moved since the last wake
        self._running = True
        self._done: Request | None = None
        self.failures = 0  # decodes that raised (the voices kept their parameters)
        self.error: str | None = None  # the last such error, for the host to report
        self._thread: threading.Thread | None = None
        self.thread_setup = None  # called first on the worker's thread (the live host raises its priority)

    # ------------------------------------------------------------------ set-up (before the stream)
    def start(self, targets: np.ndarray, enabled: np.ndarray) -> None:
        """Make the onset tables for the channels' first places (synchronously), then start the thread."""
        self._enabled = np.asarray(enabled, bool).copy()
        self._targets = np.array(targets, np.float32)
        self._make_tables(self._targets)
        self._thread = threading.Thread(target=self._loop, name="liveart-timbre", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._running = False
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ the audio thread's side
    def post(self, request: Request) -> None:
        """Ask for ``request``'s frames (the worker starts on them at the next :meth:`wake`)."""
        self._request = request
        self._pending = True

    def wake(self) -> None:
        """Start on what was posted, if anything. The engine calls this once its block is written,
        so that the worker does not take the GIL from the audio thread in the middle of a block."""
        if self._pending:
            self._pending = False
            self._wake.set()

    def latest(self) -> Result | None:
        """The newest decoded frames (for the boundary they name: the engine checks)."""
        return self._result

    def places_moved(self, targets: np.ndarray) -> None:
        """The channels' places moved: onset tables to remake (at the next :meth:`wake`)."""
        self._targets = targets.astype(np.float32)  # a copy: the engine keeps changing its own
        self._pending = True

    def onset(self, channel: int, note: int, velocity: int):
        """The first frame of a note: (harmonics, noise, amp) from the channel's table."""
        harmonics, noise, amp = self._tables
        layer = int(np.argmin(np.abs(VELOCITY_LAYERS - velocity)))
        return harmonics[channel, note, layer], noise[channel, note, layer], float(amp[channel, note, layer])

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Tests and offline checks: wait until everything posted has been decoded."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if (self._request is None or self._done is self._request) and not self._tables_behind():
                return True
            time.sleep(0.0002)
        return False

    # ------------------------------------------------------------------ the worker thread
    def _make_tables(self, places: np.ndarray) -> None:
        started = time.perf_counter()
        channels = np.flatnonzero(self._enabled)
        layers = len(VELOCITY_LAYERS)
        notes = np.arange(128)
        shape = (16, 128, layers)
        if self._tables is None:
            from ..synth.presets import N_HARMONICS, N_NOISE_BANDS

            self._tables = (np.zeros(shape + (N_HARMONICS,), np.float32), np.zeros(shape + (N_NOISE_BANDS,), np.float32),
                            np.zeros(shape, np.float32))
            self._table_places = np.full_like(places, np.nan)
        harmonics, noise, amp = (t.copy() for t in self._tables)
        for c in channels:
            if np.array_equal(places[c], self._table_places[c]):
                continue
            n = np.repeat(notes, layers)
            v = np.tile(VELOCITY_LAYERS, 128)
            z = np.repeat(places[c][None, :], len(n), axis=0)
            h, nz, a = self.model.frames(z, n, v, np.full(len(n), ONSET_SECONDS), np.full(len(n), -1.0),
                                          self.sample_rate)
            harmonics[c] = h.reshape(128, layers, -1)
            noise[c] = nz.reshape(128, layers, -1)
            amp[c] = a.reshape(128, layers)
        self._tables = (harmonics, noise, amp)  # published whole: a note-on never sees half a table
        self._table_places = places.copy()
        self.table_seconds.append(time.perf_counter() - started)

    def _tables_behind(self) -> bool:
        targets = self._targets
        return targets is not None and not np.array_equal(targets, self._table_places)

    def _loop(self) -> None:
        if self.thread_setup is not None:
            self.thread_setup()
        done: Request | None = None
        last_table = -TABLE_REFRESH_SECONDS
        while self._running:
            timeout = 0.1
            if self._tables_behind():
                timeout = max(0.0, TABLE_REFRESH_SECONDS - (time.perf_counter() - last_table))
            self._wake.wait(timeout)
            self._wake.clear()
            request = self._request
            try:
                if request is not None and request is not done:
                    started = time.perf_counter()
                    h, noise, amp = self.model.frames(request.z, request.note, request.velocity, request.on_seconds,
                                                      request.off_seconds, self.sample_rate)
                    if self.slowdown_seconds:
                        time.sleep(self.slowdown_seconds)
                    tables = build_tables(h, request.freq)
                    self._result = Result(request.boundary, request.slots, request.t_on, h, noise, amp, tables)
                    self.decode_seconds.append(time.perf_counter() - started)
                if self._tables_behind() and time.perf_counter() - last_table >= TABLE_REFRESH_SECONDS:
                    self._make_tables(self._targets)  # a request arriving meanwhile waits one table
                    last_table = time.perf_counter()
            except Exception as e:  # the thread goes on; the host reports failures and the last error
                self.failures += 1
                self.error = f"{type(e).__name__}: {e}"
                last_table = time.perf_counter()
            done = request
            self._done = done
