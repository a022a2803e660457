"""A JACK test client that plays MIDI at exact frames and records what comes back, frame-exact.

Layers, from the top:

- :func:`measure_latency` — one call: note-on/off pairs into an instrument's MIDI input, its audio
  recorded, the note-to-sound latency of every note in frames (:class:`LatencyResult`);
- :class:`JackServer` — a private ``jackd`` (dummy backend, unique server name) for a test or a
  benchmark; :class:`Probe` — the test client: one MIDI output, one MIDI input, audio inputs;
  it schedules raw MIDI at absolute JACK frames, records audio and MIDI with their absolute frames,
  sends MIDI clock (:func:`clock_events`) and counts the server's xruns;
- raw steps: :func:`detect_onsets` finds each note's first sounding frame in a recorded array.

Time is in absolute JACK frames (``jack_last_frame_time`` at a cycle's start plus the offset inside
the cycle). The process callback only copies into preallocated numpy arrays and walks event lists
built before they are handed over; hand-over is one reference assignment, so nothing is locked.

Needs the ``JACK-Client`` package (module ``jack``) and a ``jackd`` binary (JACK2);
:func:`jack_available` says whether both are there. numpy only otherwise: no torch.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from fractions import Fraction
from typing import Iterable, Sequence

import numpy as np

from ..errors import LiveartError
from ..hosts.realtime import RepeatedMidi
from ..midi.messages import (CLOCK_CONTINUE, CLOCK_PULSES_PER_QUARTER, CLOCK_START, CLOCK_STOP, CLOCK_TICK,  # noqa: F401
                             NOTE_OFF, NOTE_ON)

DEFAULT_SAMPLE_RATE = 48000
DEFAULT_PERIOD_FRAMES = 128
SERVER_START_TIMEOUT_S = 5.0
SERVER_STOP_TIMEOUT_S = 3.0
CLIENT_TIMEOUT_MS = 5000  # jackd -t: a non-realtime Python client may stall for a GC pause; don't evict it
POLL_INTERVAL_S = 0.02
MIDI_CAPTURE_CAPACITY = 65536
MIDI_BYTES_KEPT = 3  # longer messages (SysEx) are recorded by their first bytes and their length

# The anchor's onset rule (NOTES section 6): the first sample above -50 dBFS and above 4x the peak
# just before the note.
ONSET_THRESHOLD_DB = -50.0
ONSET_RATIO = 4.0
ONSET_PRE_WINDOW_FRAMES = 256  # "just before the note": ~5 ms at 48 kHz
ONSET_MAX_LATENCY_FRAMES = 4800  # a note silent for this long after its note-on counts as missed

NOTE_LENGTH_S = 0.05
NOTE_SPACING_S = 0.35  # FluidR3 piano C4 (default gain) released after 50 ms is near -55 dBFS by then
LEAD_S = 0.25  # how far ahead of the current frame the first note is scheduled
RECORD_TIMEOUT_MARGIN_S = 5.0
# A recording may take this many times its length to finish: on a noisy VM the server's own cycles
# run late and fall behind the wall clock (a CI run and an emulated one had the dummy driver at
# 85-90% of real time over a minute).
RECORD_TIMEOUT_FACTOR = 1.5


class JackProbeError(LiveartError):
    """The JACK server or a JACK port the probe needs is missing, or a measurement could not run."""


# ---------------------------------------------------------------------------------------------
# availability and the server


def jack_unavailable_reason() -> str | None:
    """Why JACK tests cannot run here (a sentence), or None when they can."""
    if shutil.which("jackd") is None:
        return "no jackd binary on PATH (install JACK2, e.g. Debian's jackd2)"
    try:
        import jack  # noqa: F401
    except ImportError as e:
        return f"the JACK-Client package (module 'jack') is not installed: {e}"
    except OSError as e:  # the module is there but libjack is not
        return f"the 'jack' module cannot load libjack: {e}"
    return None


def jack_available() -> bool:
    """True when a ``jackd`` binary exists and the ``jack`` module (JACK-Client) imports."""
    return jack_unavailable_reason() is None


def _import_jack():
    try:
        import jack
    except (ImportError, OSError) as e:
        raise JackProbeError(f"JACK is not usable here: {jack_unavailable_reason()}") from e
    return jack


def _quiet_jack(jack, quiet: bool) -> None:
    """Silence libjack's 'cannot connect to server' chatter while polling for a server."""
    if quiet:
        jack.set_error_function(lambda msg: None)
        jack.set_info_function(lambda msg: None)
    else:
        jack.set_error_function()
        jack.set_info_function()


def _try_open_client(jack, name: str, servername: str | None):
    _quiet_jack(jack, True)
    try:
        return jack.Client(name, no_start_server=True, servername=servername)
    except jack.JackOpenError:
        return None
    finally:
        _quiet_jack(jack, False)


_server_counter = 0


class JackServer:
    """A private ``jackd`` with the dummy backend (no sound card needed), as a context manager.

    ``with JackServer(sample_rate=48000, period=128) as server:`` starts
    ``jackd --realtime --name NAME --timeout 5000 -d dummy -r 48000 -p 128``, sets
    ``os.environ['JACK_DEFAULT_SERVER'] = NAME`` inside the block (so every JACK client this process
    opens, and every subprocess started with the inherited environment, uses this server), waits until
    a client can connect, and on exit stops the server (SIGTERM, then SIGKILL) and restores the
    environment. ``server.env`` is a copy of the environment for subprocesses.

    ``realtime``: JACK2 falls back to normal scheduling by itself where real-time priority is not
    permitted; on this kind of machine the real-time server had a few xruns a minute where the
    non-real-time one had dozens (a late Python client counts as one).

    The name is unique (``liveart-<pid>-<n>-<random>``) unless given, so a server someone else runs
    under the default name is never touched.

    While it runs, the server holds a PM QoS request for a CPU wake-up latency of 0 where allowed
    (:func:`liveart.hosts.realtime.hold_cpu_awake`, as a tuned audio machine would): on this project's
    VMs idle CPUs otherwise halt and wake late enough to make xruns of every client, a test's own
    reference instrument included.
    """

    def __init__(self, sample_rate: int = DEFAULT_SAMPLE_RATE, period: int = DEFAULT_PERIOD_FRAMES,
                 name: str | None = None, *, realtime: bool = True,
                 client_timeout_ms: int = CLIENT_TIMEOUT_MS,
                 start_timeout_s: float = SERVER_START_TIMEOUT_S, jackd: str = "jackd"):
        global _server_counter
        if period <= 0 or period & (period - 1):
            raise JackProbeError(f"period must be a power of two frames, got {period}")
        if sample_rate <= 0:
            raise JackProbeError(f"sample_rate must be positive, got {sample_rate}")
        _server_counter += 1
        self.sample_rate = int(sample_rate)
        self.period = int(period)
        self.name = name or f"liveart-{os.getpid()}-{_server_counter}-{uuid.uuid4().hex[:6]}"
        self.realtime = realtime
        self.client_timeout_ms = int(client_timeout_ms)
        self.start_timeout_s = float(start_timeout_s)
        self.jackd = jackd
        self.process: subprocess.Popen | None = None
        self.process_returncode: int | None = None
        self._log = None
        self._saved_env: str | None = None
        self._env_set = False
        self._awake = None  # the PM QoS request, while the server runs

    @property
    def argv(self) -> list[str]:
        """The ``jackd`` command line."""
        return [self.jackd, "--realtime" if self.realtime else "--no-realtime", "--name", self.name,
                "--timeout", str(self.client_timeout_ms),
                "-d", "dummy", "-r", str(self.sample_rate), "-p", str(self.period)]

    @property
    def env(self) -> dict[str, str]:
        """A copy of this process's environment pointing JACK clients at this server."""
        env = dict(os.environ)
        env["JACK_DEFAULT_SERVER"] = self.name
        env["JACK_NO_START_SERVER"] = "1"
        return env

    def log_text(self) -> str:
        """What jackd has printed so far."""
        if self._log is None:
            return ""
        self._log.flush()
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def start(self) -> "JackServer":
        jack = _import_jack()
        existing = _try_open_client(jack, "liveart-name-check", self.name)
        if existing is not None:
            existing.close()
            raise JackProbeError(f"a JACK server named {self.name!r} is already running; "
                                 "pick another name (or leave name=None for a unique one)")
        from ..hosts.realtime import hold_cpu_awake

        self._awake = hold_cpu_awake()
        self._log = tempfile.TemporaryFile()
        try:
            self.process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self._log,
                                            stderr=subprocess.STDOUT, env=self.env,
                                            start_new_session=True)
        except OSError as e:
            self.stop()
            raise JackProbeError(f"cannot start {self.jackd!r}: {e}; install JACK2 (Debian: jackd2)") from e
        self._saved_env = os.environ.get("JACK_DEFAULT_SERVER")
        os.environ["JACK_DEFAULT_SERVER"] = self.name
        self._env_set = True
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if self.process.poll() is not None:
                log = self.log_text().strip().splitlines()[-3:]
                self.stop()
                raise JackProbeError(f"jackd exited at start (status {self.process.returncode}): "
                                     + " | ".join(log))
            client = _try_open_client(jack, "liveart-server-check", self.name)
            if client is not None:
                client.close()
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise JackProbeError(f"jackd server {self.name!r} did not accept clients within "
                                     f"{self.start_timeout_s:g} s; its log: {self.log_text()[-300:]!r}")
            time.sleep(POLL_INTERVAL_S)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and restore ``JACK_DEFAULT_SERVER``."""
        proc, self.process = self.process, None
        if proc is not None:
            stop_process(proc, SERVER_STOP_TIMEOUT_S)
            self.process_returncode = proc.returncode
        if self._awake is not None:
            self._awake.close()
            self._awake = None
        if self._env_set:
            if self._saved_env is None:
                os.environ.pop("JACK_DEFAULT_SERVER", None)
            else:
                os.environ["JACK_DEFAULT_SERVER"] = self._saved_env
            self._env_set = False

    def __enter__(self) -> "JackServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        if self._log is not None:
            self._log.close()
            self._log = None


def stop_process(proc: subprocess.Popen, timeout_s: float, ask=None) -> None:
    """Ask ``proc`` to stop (``ask(proc)``, by default SIGTERM), wait ``timeout_s``, then kill it."""
    if proc.poll() is not None:
        return
    if ask is None:
        proc.send_signal(signal.SIGTERM)
    else:
        ask(proc)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------------------------------------
# ports


def find_ports(client, pattern: str = "", *, is_midi: bool = False, is_audio: bool = False,
               is_output: bool = False, is_input: bool = False) -> list[str]:
    """Full names of the ports whose name matches the regular expression ``pattern``."""
    ports = client.get_ports(pattern, is_audio=is_audio, is_midi=is_midi, is_input=is_input,
                             is_output=is_output)
    return [p.name for p in ports]


def wait_for_ports(client, pattern: str, *, count: int = 1, timeout_s: float = 10.0,
                   is_midi: bool = False, is_audio: bool = False, is_output: bool = False,
                   is_input: bool = False, process: subprocess.Popen | None = None) -> list[str]:
    """Wait until at least ``count`` ports match ``pattern``; returns their full names, sorted.

    ``process``: the program expected to make the ports; if it exits first the wait fails at once.
    Raises :class:`JackProbeError` naming the ports that do exist when the time runs out.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        names = sorted(find_ports(client, pattern, is_midi=is_midi, is_audio=is_audio,
                                  is_output=is_output, is_input=is_input))
        if len(names) >= count:
            return names
        if process is not None and process.poll() is not None:
            raise JackProbeError(f"the program that should make ports matching {pattern!r} exited "
                                 f"with status {process.returncode} before it did")
        if time.monotonic() > deadline:
            available = ", ".join(repr(p) for p in find_ports(client)) or "none"
            raise JackProbeError(f"no {count} JACK port(s) match {pattern!r} after {timeout_s:g} s; "
                                 f"available: {available}")
        time.sleep(POLL_INTERVAL_S)


def wait_for_port(client, pattern: str, timeout_s: float = 10.0, **kwargs) -> str:
    """Wait for one port matching ``pattern``; returns its full name (the first, sorted)."""
    return wait_for_ports(client, pattern, count=1, timeout_s=timeout_s, **kwargs)[0]


# ---------------------------------------------------------------------------------------------
# what the probe hands to its process callback


class ScheduledEvents:
    """MIDI messages at absolute frames, sorted once, walked by the process callback with an index.

    ``late`` counts messages whose frame had already passed when their cycle came; they are sent at
    offset 0 of that cycle.
    """

    def __init__(self, events: Iterable[tuple[int, bytes]]):
        ordered = sorted(((int(f), bytes(d)) for f, d in events), key=lambda e: e[0])
        for frame, data in ordered:
            if not data:
                raise JackProbeError(f"empty MIDI message at frame {frame}")
        self.frames = [f for f, _ in ordered]
        self.data = [d for _, d in ordered]
        self.index = 0
        self.late = 0

    @property
    def done(self) -> bool:
        return self.index >= len(self.frames)

    @property
    def last_frame(self) -> int | None:
        return self.frames[-1] if self.frames else None

    def __len__(self) -> int:
        return len(self.frames)


class Recording:
    """Audio from the probe's inputs for frames ``[start_frame, start_frame + frames)``.

    audio : np.ndarray, shape (frames, channels), float32; ``audio[i]`` is absolute frame
    ``start_frame + i``. Frames of cycles the server skipped (xruns) stay zero; ``covered_frames``
    counts the frames actually copied.
    """

    def __init__(self, start_frame: int, frames: int, channels: int):
        self.start_frame = int(start_frame)
        self.frames = int(frames)
        self.audio = np.zeros((self.frames, channels), np.float32)
        self.covered_frames = 0
        self.complete = False
        self._done = threading.Event()

    @property
    def end_frame(self) -> int:
        return self.start_frame + self.frames

    def frame_of(self, index: int) -> int:
        return self.start_frame + index

    def wait(self, timeout_s: float) -> bool:
        """Block until the last frame has been recorded; False on timeout."""
        return self._done.wait(timeout_s)


class MidiCapture:
    """Incoming MIDI: ``frames[i]`` (absolute frame), ``data[i, :min(lengths[i], 3)]``, first ``count``."""

    def __init__(self, capacity: int = MIDI_CAPTURE_CAPACITY):
        self.frames = np.zeros(capacity, np.int64)
        self.data = np.zeros((capacity, MIDI_BYTES_KEPT), np.uint8)
        self.lengths = np.zeros(capacity, np.int32)
        self.count = 0
        self.dropped = 0
        self.repeated = 0  # messages JACK handed again after an xrun (not kept)
        self._repeats = RepeatedMidi(capacity)

    def read_cycle(self, cycle_start: int, incoming) -> None:
        """Keep one cycle's messages, ``incoming`` (offset, data) pairs, at their absolute frames.
        After an xrun JACK2 can hand a receiver MIDI it has already read (a second run of a cycle,
        or a late run that reads the next cycle's start as its own, reading a sender's buffer
        again): those are counted in ``repeated``, not kept again (liveart.hosts.realtime.RepeatedMidi,
        the rule liveart's JACK host uses)."""
        repeats = self._repeats
        for off, b in repeats.read(cycle_start, incoming):
            k = self.count
            if k >= len(self.frames):
                self.dropped += 1
                continue
            self.frames[k] = cycle_start + off
            self.lengths[k] = len(b)
            for j in range(min(len(b), MIDI_BYTES_KEPT)):
                self.data[k, j] = b[j]
            self.count = k + 1
        self.repeated = repeats.count

    def events(self) -> list[tuple[int, bytes]]:
        """The messages received so far as (absolute frame, bytes) (SysEx cut to its first bytes)."""
        n = self.count
        return [(int(self.frames[i]), bytes(self.data[i, : min(int(self.lengths[i]), MIDI_BYTES_KEPT)]))
                for i in range(n)]


# ---------------------------------------------------------------------------------------------
# MIDI clock


def clock_interval_frames(sample_rate: int, bpm) -> Fraction:
    """Frames between two MIDI clock pulses (24 per quarter note), exactly."""
    bpm = Fraction(bpm)
    if bpm <= 0:
        raise JackProbeError(f"tempo must be positive, got {float(bpm)} bpm")
    return Fraction(int(sample_rate) * 60) / (bpm * CLOCK_PULSES_PER_QUARTER)


def clock_events(sample_rate: int, start_frame: int, bpm: float, end_frame: int, *,
                 tempo_changes: Sequence[tuple[int, float]] = (), stop_frame: int | None = None,
                 continue_frame: int | None = None, send_start: bool = True) -> list[tuple[int, bytes]]:
    """MIDI clock as (absolute frame, message): Start (0xFA), then a tick (0xF8) every
    ``sample_rate * 60 / (bpm * 24)`` frames from ``start_frame`` until before ``end_frame``.

    Tick positions accumulate exactly (as fractions); tick ``k`` goes at the floor of its position, so
    the error never grows and is below one frame. ``tempo_changes``: (frame, bpm) pairs; a change is
    phase-continuous — the part of the current tick interval left after the change frame is rescaled
    to the new tempo (a change exactly on a tick simply sets the next interval). ``stop_frame``: a Stop
    (0xFC) there and no ticks after it; ``continue_frame`` (after the stop): a Continue (0xFB) there
    and ticks again from that frame. Start and the first tick share a frame, Start first.
    """
    start = Fraction(int(start_frame))
    changes = sorted((Fraction(int(f)), b) for f, b in tempo_changes)
    if stop_frame is None and continue_frame is not None:
        raise JackProbeError("continue_frame needs a stop_frame before it")
    if stop_frame is not None and continue_frame is not None and continue_frame <= stop_frame:
        raise JackProbeError(f"continue_frame {continue_frame} must come after stop_frame {stop_frame}")
    tick, start_msg = bytes([CLOCK_TICK]), bytes([CLOCK_START])
    events: list[tuple[int, bytes]] = []
    if send_start:
        events.append((int(start), start_msg))
    iv = clock_interval_frames(sample_rate, bpm)
    pos, ci, stopped = start, 0, False
    # changes at or before the start set the starting tempo
    while ci < len(changes) and changes[ci][0] <= pos:
        iv = clock_interval_frames(sample_rate, changes[ci][1])
        ci += 1
    while True:
        if stop_frame is not None and not stopped and pos >= stop_frame:
            stopped = True
            events.append((int(stop_frame), bytes([CLOCK_STOP])))
            if continue_frame is None:
                break
            while ci < len(changes) and changes[ci][0] <= continue_frame:
                iv = clock_interval_frames(sample_rate, changes[ci][1])
                ci += 1
            pos = Fraction(int(continue_frame))
            if pos >= end_frame:
                break
            events.append((int(continue_frame), bytes([CLOCK_CONTINUE])))
        if pos >= end_frame:
            break
        events.append((math.floor(pos), tick))
        nxt = pos + iv
        while ci < len(changes) and changes[ci][0] < nxt:
            g, new_bpm = changes[ci]
            new_iv = clock_interval_frames(sample_rate, new_bpm)
            nxt = g + (nxt - g) * new_iv / iv if g > pos else pos + new_iv
            iv = new_iv
            ci += 1
        pos = nxt
    return events


# ---------------------------------------------------------------------------------------------
# the probe


class Probe:
    """A JACK client with one MIDI output, one MIDI input and ``audio_inputs`` audio inputs.

    Ports are ``<client>:midi_out``, ``<client>:midi_in``, ``<client>:in_1`` ... (``client.name`` may
    carry a suffix if the name was taken). The client is active from construction until
    :meth:`close` (or the end of a ``with`` block).

    Counters (read from any thread): ``xruns`` (reported by the server), ``cycles``,
    ``callback_errors`` (exceptions caught in the process callback), ``late_events``.
    """

    def __init__(self, name: str = "liveart-probe", audio_inputs: int = 2, *,
                 servername: str | None = None, midi_capacity: int = MIDI_CAPTURE_CAPACITY):
        jack = _import_jack()
        try:
            self.client = jack.Client(name, no_start_server=True, servername=servername)
        except jack.JackOpenError as e:
            server = servername or os.environ.get("JACK_DEFAULT_SERVER", "default")
            raise JackProbeError(f"cannot open a JACK client on server {server!r}: is jackd running? "
                                 "(use JackServer to start one)") from e
        self.sample_rate = self.client.samplerate
        self.period = self.client.blocksize
        self.midi_out = self.client.midi_outports.register("midi_out")
        self.midi_in = self.client.midi_inports.register("midi_in")
        self.audio_in = [self.client.inports.register(f"in_{i + 1}") for i in range(audio_inputs)]
        self.xruns = 0
        self.xrun_frames: list[int] = []  # the server's frame when each xrun was reported (a little after it)
        self.cycles = 0
        self.callback_errors = 0
        self.last_callback_error: BaseException | None = None
        self.shutdown_reason: str | None = None
        self._cycle_end_frame = -1  # end of the last processed cycle, absolute
        self._schedules: tuple[ScheduledEvents, ...] = ()
        self._recording: Recording | None = None
        self._capture = MidiCapture(midi_capacity)
        self.client.set_process_callback(self._process)
        self.client.set_xrun_callback(self._on_xrun)
        self.client.set_shutdown_callback(self._on_shutdown)
        self.client.activate()

    # -- life cycle --------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.client.name

    def close(self) -> None:
        if self.client is not None:
            self.client.deactivate()
            self.client.close()
            self.client = None

    def __enter__(self) -> "Probe":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- time --------------------------------------------------------------------------------

    @property
    def frame_time(self) -> int:
        """The server's estimate of the current frame (outside the callback)."""
        return self.client.frame_time

    @property
    def processed_frame(self) -> int:
        """The frame after the last cycle this probe processed (-1 before the first)."""
        return self._cycle_end_frame

    def wait_until_frame(self, frame: int, timeout_s: float) -> bool:
        """Sleep until the probe has processed the cycle containing ``frame``; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self._cycle_end_frame <= frame:
            if time.monotonic() > deadline or self.shutdown_reason is not None:
                return False
            time.sleep(0.005)
        return True

    # -- ports -------------------------------------------------------------------------------

    @property
    def midi_out_name(self) -> str:
        return self.midi_out.name

    @property
    def midi_in_name(self) -> str:
        return self.midi_in.name

    @property
    def audio_in_names(self) -> list[str]:
        return [p.name for p in self.audio_in]

    def find_ports(self, pattern: str = "", **kwargs) -> list[str]:
        """Full names of ports matching the regex ``pattern``; see :func:`find_ports`."""
        return find_ports(self.client, pattern, **kwargs)

    def wait_for_port(self, pattern: str, timeout_s: float = 10.0, **kwargs) -> str:
        return wait_for_port(self.client, pattern, timeout_s, **kwargs)

    def wait_for_ports(self, pattern: str, **kwargs) -> list[str]:
        return wait_for_ports(self.client, pattern, **kwargs)

    def _connect(self, source: str, destination: str) -> None:
        jack = _import_jack()
        if any(p.name == destination for p in self.client.get_all_connections(source)):
            return  # already connected
        try:
            self.client.connect(source, destination)
        except jack.JackError as e:
            raise JackProbeError(f"cannot connect JACK port {source!r} to {destination!r}: {e}; "
                                 f"available ports: {', '.join(self.find_ports())}") from e

    def connect_midi_to(self, port_name: str) -> None:
        """Connect the probe's MIDI output to the MIDI input ``port_name`` (full name)."""
        self._connect(self.midi_out.name, port_name)

    def connect_midi_from(self, port_name: str) -> None:
        """Connect the MIDI output ``port_name`` to the probe's MIDI input."""
        self._connect(port_name, self.midi_in.name)

    def connect_audio_from(self, port_names: Sequence[str]) -> None:
        """Connect audio outputs to the probe's inputs in order (one port: to ``in_1`` only)."""
        if len(port_names) > len(self.audio_in):
            raise JackProbeError(f"{len(port_names)} audio ports given but the probe has "
                                 f"{len(self.audio_in)} inputs: {list(port_names)}")
        for src, dst in zip(port_names, self.audio_in):
            self._connect(src, dst.name)

    def disconnect_all(self) -> None:
        for port in [self.midi_out, self.midi_in, *self.audio_in]:
            port.disconnect()

    # -- what the callback plays and records ---------------------------------------------------

    def schedule(self, events: Iterable[tuple[int, bytes]]) -> ScheduledEvents:
        """Send raw MIDI messages at absolute frames; returns the handle (``.done``, ``.late``).

        May be called while running and more than once: schedules play side by side.
        """
        sched = ScheduledEvents(events)
        # one reference assignment: the callback sees the old tuple or the new one, never half
        self._schedules = tuple(s for s in self._schedules if not s.done) + (sched,)
        return sched

    def send_at(self, frame: int, data: bytes) -> ScheduledEvents:
        return self.schedule([(frame, data)])

    def cancel_schedules(self) -> None:
        self._schedules = ()

    def send_clock(self, start_frame: int, bpm: float, end_frame: int, **kwargs) -> ScheduledEvents:
        """Schedule MIDI clock; arguments as :func:`clock_events` (sample rate is the server's)."""
        return self.schedule(clock_events(self.sample_rate, start_frame, bpm, end_frame, **kwargs))

    def record(self, start_frame: int, *, frames: int | None = None,
               seconds: float | None = None) -> Recording:
        """Record the audio inputs from absolute ``start_frame`` for ``frames`` (or ``seconds``).

        The buffer is allocated here, before the callback sees it. One recording at a time: a new
        one replaces the old.
        """
        if (frames is None) == (seconds is None):
            raise JackProbeError("give exactly one of frames or seconds")
        n = int(frames if frames is not None else round(seconds * self.sample_rate))
        if n <= 0:
            raise JackProbeError(f"a recording needs a positive length, got {n} frames")
        rec = Recording(start_frame, n, len(self.audio_in))
        self._recording = rec
        return rec

    def capture_midi(self, capacity: int = MIDI_CAPTURE_CAPACITY) -> MidiCapture:
        """Start a fresh record of incoming MIDI (the previous one stops filling) and return it."""
        cap = MidiCapture(capacity)
        self._capture = cap
        return cap

    @property
    def midi_capture(self) -> MidiCapture:
        return self._capture

    @property
    def late_events(self) -> int:
        return sum(s.late for s in self._schedules)

    # -- callbacks ---------------------------------------------------------------------------

    def _on_xrun(self, delayed_usecs: float) -> None:
        self.xruns += 1
        client = self.client
        if client is not None:  # (the notification thread, not the real-time one)
            self.xrun_frames.append(client.frame_time)

    def _on_shutdown(self, status, reason: str) -> None:
        self.shutdown_reason = reason or "the JACK server shut down"

    def _process(self, frames: int) -> None:
        try:
            self._process_cycle(frames)
        except Exception as e:  # keep the callback alive; the counter tells the caller
            self.callback_errors += 1
            self.last_callback_error = e

    def _process_cycle(self, frames: int) -> None:
        t0 = self.client.last_frame_time
        t1 = t0 + frames

        # MIDI out: every due message at its offset in this cycle
        out = self.midi_out
        out.clear_buffer()
        schedules = self._schedules
        if len(schedules) == 1:
            s = schedules[0]
            i, fr, n = s.index, s.frames, len(s.frames)
            while i < n and fr[i] < t1:
                off = fr[i] - t0
                if off < 0:
                    off = 0
                    s.late += 1
                out.write_midi_event(off, s.data[i])
                i += 1
            s.index = i
        elif schedules:
            due = None
            for s in schedules:
                i, fr, n = s.index, s.frames, len(s.frames)
                while i < n and fr[i] < t1:
                    off = fr[i] - t0
                    if off < 0:
                        off = 0
                        s.late += 1
                    if due is None:
                        due = []
                    due.append((off, s.data[i]))
                    i += 1
                s.index = i
            if due is not None:
                due.sort(key=lambda e: e[0])  # JACK refuses out-of-order events
                for off, data in due:
                    out.write_midi_event(off, data)

        # MIDI in, with absolute frames
        self._capture.read_cycle(t0, self.midi_in.incoming_midi_events())

        # audio in
        rec = self._recording
        if rec is not None and not rec.complete:
            a = max(t0, rec.start_frame)
            b = min(t1, rec.end_frame)
            if a < b:
                dst = rec.audio[a - rec.start_frame : b - rec.start_frame]
                for ch, port in enumerate(self.audio_in):
                    dst[:, ch] = port.get_array()[a - t0 : b - t0]
                rec.covered_frames += b - a
            if t1 >= rec.end_frame:
                rec.complete = True
                rec._done.set()

        self.cycles += 1
        self._cycle_end_frame = t1


# ---------------------------------------------------------------------------------------------
# onsets and latency


def detect_onsets(audio: np.ndarray, note_frames: Sequence[int], threshold_db: float = ONSET_THRESHOLD_DB,
                  ratio: float = ONSET_RATIO, *, pre_window_frames: int = ONSET_PRE_WINDOW_FRAMES,
                  max_latency_frames: int = ONSET_MAX_LATENCY_FRAMES) -> list[int | None]:
    """Latency in frames from each note-on to the first sample that sounds, or None.

    audio : np.ndarray, shape (frames,) or (frames, channels), linear full scale (1.0 = 0 dBFS).
    note_frames : indices into ``audio`` of the note-ons.
    A sample sounds when its largest absolute value over the channels is above ``threshold_db`` dBFS
    and above ``ratio`` times the peak of the ``pre_window_frames`` frames just before the note-on
    (so a previous note's tail does not count). A note with no such sample in
    ``[note, note + max_latency_frames)`` (or before the array ends) gives None.
    """
    x = np.asarray(audio)
    env = np.abs(x) if x.ndim == 1 else np.abs(x).max(axis=1)
    floor = 10.0 ** (threshold_db / 20.0)
    out: list[int | None] = []
    for f in note_frames:
        f = int(f)
        if f < 0 or f >= len(env):
            out.append(None)
            continue
        pre = env[max(0, f - pre_window_frames) : f]
        threshold = max(floor, ratio * float(pre.max())) if len(pre) else floor
        seg = env[f : f + max_latency_frames]
        hits = np.flatnonzero(seg > threshold)
        out.append(int(hits[0]) if len(hits) else None)
    return out


@dataclasses.dataclass
class LatencyResult:
    """Per-note latencies of one run and their statistics.

    latencies_frames : list, one entry per note, frames from note-on to first sound or None (missed).
    note_frames : np.ndarray of int64, the absolute frames of the note-ons.
    Percentiles are taken over the notes that sounded (numpy's 'nearest' method: observed values).
    """

    sample_rate: int
    period_frames: int
    latencies_frames: list
    note_frames: np.ndarray
    xruns: int = 0
    late_events: int = 0
    frames_missing: int = 0
    callback_errors: int = 0
    recording: Recording | None = dataclasses.field(default=None, repr=False)
    xrun_frames: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))

    def near_xrun(self, before_frames: int, after_frames: int) -> np.ndarray:
        """Per note, whether an xrun was reported from ``before_frames`` before its note-on to
        ``after_frames`` after it. Around an xrun a late client reads the next cycle's start as its
        own, its output for a cycle can be dropped and MIDI another client wrote can be overwritten
        before it is read: the timing of such a note says nothing about the instrument."""
        return near_xruns(self.note_frames, self.xrun_frames, before_frames, after_frames)

    @property
    def notes(self) -> int:
        return len(self.latencies_frames)

    @property
    def missed(self) -> int:
        return sum(1 for v in self.latencies_frames if v is None)

    @property
    def sounded_frames(self) -> np.ndarray:
        return np.array([v for v in self.latencies_frames if v is not None], np.int64)

    @property
    def send_offsets(self) -> np.ndarray:
        """Each note-on's offset inside its period, frames."""
        return np.asarray(self.note_frames) % self.period_frames

    def percentile_frames(self, q: float) -> float:
        s = self.sounded_frames
        return float(np.percentile(s, q, method="nearest")) if len(s) else math.nan

    @property
    def p1_frames(self) -> float:
        return self.percentile_frames(1)

    @property
    def p50_frames(self) -> float:
        return self.percentile_frames(50)

    @property
    def p99_frames(self) -> float:
        return self.percentile_frames(99)

    @property
    def jitter_frames(self) -> float:
        """p99 - p1, frames."""
        return self.p99_frames - self.p1_frames

    def ms(self, frames: float) -> float:
        return 1000.0 * frames / self.sample_rate

    @property
    def p1_ms(self) -> float:
        return self.ms(self.p1_frames)

    @property
    def p50_ms(self) -> float:
        return self.ms(self.p50_frames)

    @property
    def p99_ms(self) -> float:
        return self.ms(self.p99_frames)

    @property
    def jitter_ms(self) -> float:
        return self.ms(self.jitter_frames)

    def summary(self) -> dict:
        """The figures as a flat dict (frames and ms), for tables and JSON."""
        return {"sample_rate": self.sample_rate, "period_frames": self.period_frames,
                "notes": self.notes, "missed": self.missed,
                "p1_frames": self.p1_frames, "p50_frames": self.p50_frames, "p99_frames": self.p99_frames,
                "jitter_frames": self.jitter_frames, "p1_ms": self.p1_ms, "p50_ms": self.p50_ms,
                "p99_ms": self.p99_ms, "jitter_ms": self.jitter_ms, "xruns": self.xruns,
                "late_events": self.late_events, "frames_missing": self.frames_missing,
                "callback_errors": self.callback_errors}


def near_xruns(frames, xrun_frames, before_frames: int, after_frames: int) -> np.ndarray:
    """Per frame of ``frames``, whether one of ``xrun_frames`` lies from ``before_frames`` before it to
    ``after_frames`` after it (both ends included)."""
    f = np.asarray(frames, np.int64)[:, None]
    x = np.asarray(xrun_frames, np.int64)[None, :]
    return np.any((x >= f - before_frames) & (x <= f + after_frames), axis=1)


def measure_latency(probe: Probe, midi_in_port: str | None, audio_out_ports: Sequence[str] | None,
                    notes: int = 200, spacing_frames: int | None = None, note: int = 60,
                    velocity: int = 100, offset_rng_seed: int = 0, *, channel: int = 0,
                    note_length_frames: int | None = None, threshold_db: float = ONSET_THRESHOLD_DB,
                    ratio: float = ONSET_RATIO, pre_window_frames: int = ONSET_PRE_WINDOW_FRAMES,
                    max_latency_frames: int | None = None, lead_frames: int | None = None,
                    keep_recording: bool = False) -> LatencyResult:
    """Play ``notes`` note-on/off pairs into an instrument and measure each note-to-sound latency.

    midi_in_port / audio_out_ports : full JACK port names to connect the probe to (None: already
    connected). Note-on ``k`` goes at ``first + k * spacing_frames + r_k`` where ``r_k`` is uniform in
    ``[0, period)`` (seeded by ``offset_rng_seed``), so the send offset inside a period is spread
    evenly — the jitter of an instrument that takes events at block starts shows only then. Each
    note is held ``note_length_frames`` (default 50 ms); the default spacing (350 ms) lets a piano
    note (FluidR3 piano, default gain) decay to about -55 dBFS before the next. Onsets as
    :func:`detect_onsets`.
    """
    sr, period = probe.sample_rate, probe.period
    spacing = int(spacing_frames if spacing_frames is not None else round(NOTE_SPACING_S * sr))
    hold = int(note_length_frames if note_length_frames is not None else round(NOTE_LENGTH_S * sr))
    if notes <= 0:
        raise JackProbeError(f"notes must be positive, got {notes}")
    if not 0 <= note <= 127 or not 1 <= velocity <= 127 or not 0 <= channel <= 15:
        raise JackProbeError(f"bad note {note} / velocity {velocity} / channel {channel}: "
                             "note 0-127, velocity 1-127, channel 0-15")
    if spacing < hold + 2 * period:
        raise JackProbeError(f"spacing_frames {spacing} too short for notes held {hold} frames at "
                             f"{period}-frame periods; give at least {hold + 2 * period}")
    max_lat = int(max_latency_frames if max_latency_frames is not None
                  else min(ONSET_MAX_LATENCY_FRAMES * sr // DEFAULT_SAMPLE_RATE, spacing - period))
    if midi_in_port:
        probe.connect_midi_to(midi_in_port)
    if audio_out_ports:
        probe.connect_audio_from(list(audio_out_ports))

    rng = np.random.default_rng(offset_rng_seed)
    lead = int(lead_frames if lead_frames is not None else max(round(LEAD_S * sr), 4 * period))
    first = probe.frame_time + lead
    on_frames = first + np.arange(notes, dtype=np.int64) * spacing + rng.integers(0, period, size=notes)
    on_msg = bytes([NOTE_ON | channel, note, velocity])
    off_msg = bytes([NOTE_OFF | channel, note, 0])
    events = [(int(f), on_msg) for f in on_frames] + [(int(f) + hold, off_msg) for f in on_frames]

    rec_start = int(on_frames[0]) - pre_window_frames
    rec_end = int(on_frames[-1]) + max(spacing, max_lat)
    xruns0, errors0, xrun_index = probe.xruns, probe.callback_errors, len(probe.xrun_frames)
    rec = probe.record(rec_start, frames=rec_end - rec_start)
    sched = probe.schedule(events)
    timeout = RECORD_TIMEOUT_FACTOR * (rec_end - probe.frame_time) / sr + RECORD_TIMEOUT_MARGIN_S
    if not rec.wait(timeout):
        raise JackProbeError(f"the recording did not finish within {timeout:.1f} s "
                             f"(probe processed up to frame {probe.processed_frame}, needed {rec_end}; "
                             f"server shutdown: {probe.shutdown_reason})")
    latencies = detect_onsets(rec.audio, on_frames - rec_start, threshold_db, ratio,
                              pre_window_frames=pre_window_frames, max_latency_frames=max_lat)
    return LatencyResult(sample_rate=sr, period_frames=period, latencies_frames=latencies,
                         note_frames=on_frames, xruns=probe.xruns - xruns0, late_events=sched.late,
                         frames_missing=rec.frames - rec.covered_frames,
                         callback_errors=probe.callback_errors - errors0,
                         recording=rec if keep_recording else None,
                         xrun_frames=np.array(probe.xrun_frames[xrun_index:], np.int64))


__all__ = [
    "JackProbeError", "jack_available", "stop_process", "jack_unavailable_reason", "JackServer", "Probe",
    "ScheduledEvents", "Recording", "MidiCapture", "clock_events", "clock_interval_frames",
    "find_ports", "wait_for_port", "wait_for_ports", "detect_onsets", "LatencyResult",
    "measure_latency", "near_xruns",
]
