"""The live host: a controller (or a DAW) in, notes and sound out, a take saved as it happens.

Threads, and what each may do (the audio callback never waits for any other):

- **audio** (the audio server's real-time thread): the compiled cycle
  (:func:`liveart.realtime.callback.cycle`) takes the MIDI in and the conductor's notes, schedules
  them into the engine's compiled block at their frames, renders, and hands what was played to the
  take, the conductor, the visualizer and MIDI out, through lock-free rings. On JACK it is a numba
  cfunc that libjack calls (:mod:`liveart.realtime.jack`): it never takes the GIL, so no Python
  thread can make it late. On the portaudio backend it is still called from sounddevice's Python
  callback (which takes the GIL), with the MIDI the rtmidi thread stamped.
- **MIDI input** (portaudio backend, rtmidi's thread): stamps each message with the frame it will
  sound at (its arrival time, one block on: latency one block, no jitter from the block grid) and
  queues it.
- **conductor**: the clock (internal, or following an external MIDI clock) and the melody model's
  :class:`~liveart.melody.play.Partner`; it runs each 16th step a few milliseconds ahead of the
  audio, so the model's notes land on the clock's grid at their exact frame.
- **timbre**: the engine's :class:`~liveart.timbre.worker.TimbreWorker` decodes a control hop ahead.
- **sender**: writes MIDI out (the model's notes, the clock) when the audio has played it.
- **main**: signals, the status line, flushing the take, following the controller when it is
  unplugged and comes back, and the orderly stop: note-offs for everything, the take closed, a log.

Time is the engine's frame counter; wall time appears only where the outside world comes in (a
MIDI message's arrival) and where the conductor decides how long to sleep.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from .. import events as ev
from ..engine import Engine
from ..errors import LiveartError, PortError
from ..patch import Patch
from ..midi.messages import is_note_off as _is_note_off
from ..realtime import callback as cb
from .conductor import Conductor, _message_row
from .jack import JackIO
from .realtime import hold_cpu_awake, raise_priority

SWITCH_INTERVAL_SECONDS = 0.0005  # Python's GIL hand-over interval while playing (default 5 ms > a block)
MAX_INBOX = 512  # queued input messages; beyond this a flood's note-ons are dropped (note-offs never)
MAX_EVENTS_PER_BLOCK = cb.MAX_EVENTS_PER_CYCLE  # input events taken into one block; the rest wait for the next
STATUS_SECONDS = 0.25
STATUS_SECONDS_NOT_TTY = 10.0  # into a log file or a pipe: a line now and then, not four a second
# Threads that take the GIL run at a real-time priority under the audio thread's where the system
# allows it (JACK users have rtprio limits): a GIL holder preempted by some other program would
# make the audio callback wait. Best effort; nothing changes where it is not allowed.
TAKE_FLUSH_SECONDS = 0.25  # at most this much of a take can be lost (a bar is longer at any usable tempo)
RECONNECT_POLL_SECONDS = 0.5
VISUAL_FEED_SECONDS = 0.008  # what the engine played goes to the visual display's process this often
TIMING_HISTORY = cb.TIMING_HISTORY  # callback durations kept (about 3 minutes at 375 callbacks a second)
FINAL_NOTE_OFF_SENDS = 2  # JACK: the final note-offs go out this many times ...
FINAL_NOTE_OFF_GAP_CALLBACKS = 8  # ... this many callbacks apart (more than RepeatedMidi's window)
FINAL_NOTE_OFF_GAP_SECONDS = 0.03  # portaudio backend: the same, in time
STOP_RELEASE_SECONDS = 0.4  # after the final note-offs the audio runs on this long, so releases do not click
MAX_BLOCK_FRAMES = 8192
MAX_CATCH_UP_FRAMES = cb.MAX_CATCH_UP_FRAMES  # after an xrun, the JACK backend renders up to this many missed frames unheard
# Tests only: a thread inside liveart holds the GIL this many milliseconds at a time, 10 ms apart, to
# show that the audio never waits for it (the log's "gil_hog" says how many callbacks ran in each hold).
GIL_HOG_ENV = "LIVEART_TEST_GIL_HOG_MS"


@dataclass
class LiveSettings:
    backend: str = "auto"  # jack | portaudio | auto (JACK when a server runs and JACK-Client is installed)
    midi_api: str = "auto"  # the portaudio backend's MIDI (rtmidi)
    input_name: str | None = None  # a controller (substring of its port name)
    output_name: str | None = None  # a MIDI output port for the model's notes and the clock
    virtual: bool = False  # make "liveart in" and "liveart out"
    audio_device: str | None = None
    sample_rate: int | None = None
    block_frames: int | None = None
    clock: str = "internal"  # internal | external
    bpm: float = 120.0
    melody: bool = True
    mode: str | None = None  # overrides the patch's melody mode
    seed: int = 0
    takes_dir: str | None = "takes"  # None: no take
    duration_seconds: float | None = None  # stop by itself after this long (tests, benchmarks)
    status: bool = True  # the one-line status on stderr
    visual: object = None  # liveart.visual.live.DisplayOptions: show the visualizer on a local web page
    visual_model: str | None = None  # its generator (None: the shipped one)


@dataclass
class LiveStats:
    callbacks: int = 0
    xruns: int = 0  # xruns the server (JACK) or PortAudio reported
    input_messages: int = 0
    input_dropped: int = 0  # note-ons (and others) dropped in a flood
    late_input: int = 0  # input that could not be placed one block on (the callback ran late)
    generated_notes: int = 0
    generated_late: int = 0  # model notes that reached the audio thread after their frame
    generated_late_max_frames: int = 0
    clock_ticks_out: int = 0
    melody_steps: int = 0
    melody_step_max_ms: float = 0.0
    panics: int = 0
    caught_up_frames: int = 0  # JACK: frames of cycles missed in xruns, rendered unheard to keep time
    slipped_frames: int = 0  # JACK: missed frames beyond what is caught up (time slipped by this much)
    held_frames: int = 0  # JACK: cycles the engine had already played (a late callback), waited out in silence
    repeated_input: int = 0  # JACK: MIDI handed again after an xrun (dropped; RepeatedMidi)
    repeated_input_moved: int = 0  # of those, read again with a later cycle start than the first time
    midi_out_dropped: int = 0  # messages a full MIDI out buffer refused
    rings_full: int = 0  # rows a full ring refused (the take, the conductor or the visualizer fell behind)
    cpu_awake: bool = False  # the CPU wake-up latency request (PM QoS 0) was held while playing
    errors: list = field(default_factory=list)


class LiveHost(Conductor):
    """One performance. ``run()`` plays until stopped (Ctrl-C, SIGTERM, ``stop()``, the duration)
    and returns the stats; everything is opened and checked before the audio starts."""

    def __init__(self, patch: Patch, settings: LiveSettings, out=sys.stderr, melody_model=None, timbre_model=None):
        self.patch = patch
        self.settings = settings
        self.out = out
        self.stats = LiveStats()
        self._stop = threading.Event()
        self._stop_reason = ""
        self._error: str | None = None
        self._inbox: deque = deque()  # portaudio backend: (frame, message) from rtmidi's thread
        self._out_ready: deque = deque()  # portaudio backend: messages for the sender thread
        self.display = None
        self.rt: cb.LiveState | None = None  # the compiled cycle's state and rings (made with the engine)
        self._inbox_dropped = 0
        self._clock_us = lambda: int(time.perf_counter() * 1e6)  # the backend's clock (JACK: jack_get_time)
        self._melody_ms = deque(maxlen=4096)
        self._threads: list[threading.Thread] = []
        self._inputs = []
        self.jack = None
        self.backend = "portaudio"
        self.midi_out = None
        self.stream = None
        self.take = None
        self.log_path: Path | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._closed = False
        try:
            self._open(melody_model, timbre_model)
        except BaseException:
            self._close_ports()
            raise

    # ------------------------------------------------------------------ set-up
    def _open(self, melody_model, timbre_model) -> None:
        s = self.settings
        if s.clock not in ("internal", "external"):
            raise LiveartError(f"clock must be internal or external, not {s.clock!r}")
        if not 20 <= s.bpm <= 400:
            raise LiveartError(f"--bpm must be 20 to 400, not {s.bpm:g}")
        if s.block_frames is not None and not 16 <= s.block_frames <= MAX_BLOCK_FRAMES:
            raise LiveartError(f"--block must be 16 to {MAX_BLOCK_FRAMES} frames, not {s.block_frames}")
        if s.backend not in ("auto", "jack", "portaudio"):
            raise LiveartError(f"backend must be auto, jack or portaudio, not {s.backend!r}")
        if s.input_name is None and not s.virtual:
            raise PortError("no MIDI input: give --in NAME (a controller; 'liveart devices' lists them) "
                            "or --virtual (ports a DAW can connect to)")
        if s.output_name is not None and s.virtual:
            raise PortError("--out and --virtual both name the MIDI output; give one")
        if s.visual is not None:  # a bad generator is told before any device is opened
            from ..visual.generator import VisualGenerator, resolve_visual_model

            VisualGenerator(resolve_visual_model(s.visual_model), shown=s.visual.size, device="cpu")
        self.jack = None
        if s.backend != "portaudio":
            self.jack = JackIO.open(required=s.backend == "jack")
        if self.jack is not None:
            self._open_jack()
        else:
            self._open_portaudio()
        self._open_models(melody_model, timbre_model)

    def _open_jack(self) -> None:
        """The JACK backend: one JACK client reads MIDI with its frame offsets and writes audio and
        MIDI in the same process callback: events play at their exact frame."""
        s = self.settings
        jack_io = self.jack
        self.backend = "jack"
        self.midi_api = "jack (JACK-Client)"
        self.device = {"hostapi_name": "JACK", "name": jack_io.client.name}
        self.sample_rate = jack_io.client.samplerate
        self.block_frames = jack_io.client.blocksize
        if s.sample_rate is not None and s.sample_rate != self.sample_rate:
            raise PortError(f"the JACK server runs at {self.sample_rate} Hz; --sample-rate {s.sample_rate} cannot "
                            f"be used with it (restart jackd with -r {s.sample_rate}, or leave --sample-rate out)")
        if s.block_frames is not None and s.block_frames != self.block_frames:
            raise PortError(f"the JACK server's period is {self.block_frames} frames; --block {s.block_frames} "
                            f"cannot be used with it (restart jackd with -p {s.block_frames}, or leave --block out)")
        if s.audio_device is not None:
            jack_io.audio_targets = jack_io.find(s.audio_device, midi=False, output=False, what="audio output")
        if s.input_name is not None:
            jack_io.want_input(s.input_name)
        if s.output_name is not None:
            jack_io.midi_targets = [jack_io.find(s.output_name, midi=True, output=False, what="MIDI output")[0]]
        self.midi_out = "jack"  # the JACK client's own port: written in the process callback
        jack_io.on_xrun = self._count_xrun
        from ..realtime import jackapi

        self._clock_us = jackapi.get_time

    def _open_portaudio(self) -> None:
        from ..midi import ports

        s = self.settings
        self.backend = "portaudio"
        if ports.jack_running():
            ports.name_jack_client()  # audio ports "liveart:out_0" and "liveart:out_1", not "PortAudio:..."
        device = ports.choose_audio_device(s.audio_device)
        self.device = device
        self.on_jack = device["hostapi_name"] == ports.JACK_HOST_API
        self.sample_rate = int(s.sample_rate or (device["default_samplerate"] if self.on_jack
                                                  else self.patch.audio.sample_rate))
        self.block_frames = int(s.block_frames or self.patch.audio.block_frames)
        if not 16 <= self.block_frames <= MAX_BLOCK_FRAMES:
            raise LiveartError(f"--block must be 16 to {MAX_BLOCK_FRAMES} frames, not {self.block_frames}")
        self.midi_api = ports.choose_midi_api(s.midi_api, device["hostapi_name"])
        # MIDI first: a wrong port name fails before models load.
        if s.input_name is not None:
            self._inputs.append(ports.ReconnectingInput(self.midi_api, s.input_name, self._on_midi))
        if s.virtual:
            self._inputs.append(ports.ReconnectingInput(self.midi_api, None, self._on_midi, virtual=True))
            self.midi_out = ports.open_output(self.midi_api, None, virtual=True)
        elif s.output_name is not None:
            self.midi_out = ports.open_output(self.midi_api, s.output_name, virtual=False)

    def _open_models(self, melody_model, timbre_model) -> None:
        """Models, loaded and warmed before the stream; the take opened."""
        s = self.settings
        timbre = None
        if self.patch.uses_timbre():
            from ..timbre.model import TimbreModel
            from ..timbre.worker import TimbreWorker

            model = timbre_model or TimbreModel.load(self.patch.timbre.model, self.patch.timbre.device)
            timbre = TimbreWorker(model, self.sample_rate)
            timbre.thread_setup = raise_priority
        self.timbre_worker = timbre
        self.engine = Engine(self.patch, self.sample_rate, seed=s.seed, timbre=timbre)
        self.engine.reserve(MAX_BLOCK_FRAMES)
        self.partner = None
        self.melody_channel = self.patch.melody.channel
        if s.melody:
            from dataclasses import replace

            from ..melody.model import MelodyModel
            from ..melody.play import Partner
            from ..melody import representation as rep

            settings = self.patch.melody.settings
            if s.mode is not None:
                settings = replace(settings, mode=s.mode)
            model = melody_model or MelodyModel(self.patch.melody.model)

            def partner():
                return Partner(model, settings, seed=self.patch.melody.seed + s.seed, meter=rep.Meter(),
                               step_seconds=60.0 / (s.bpm * 4))

            partner().step(0)  # warm the model (its first run allocates), then start fresh
            self.partner = partner()
        self._melody_settings = self.partner.settings if self.partner else None
        self.rt = cb.LiveState(conductor=self.partner is not None, external_clock=s.clock == "external")
        if s.takes_dir is not None:
            from .takes import TakeWriter

            self.take = TakeWriter(s.takes_dir, self.sample_rate, self._take_meta())
            self.log_path = self.take.path.with_suffix(".log.json")
        if s.visual is not None:
            from ..visual.generator import resolve_visual_model
            from ..visual.live import LiveDisplay

            self.display = LiveDisplay(resolve_visual_model(s.visual_model), s.visual, self.sample_rate)
            self._note(f"visual: {self.display.url} (generator on {self.display.device})")

    def _take_meta(self) -> dict:
        s = self.settings
        try:
            patch_text = Path(self.patch.source).read_text()
        except OSError:
            patch_text = None
        return {
            "liveart": __version__, "kind": "live take", "patch": self.patch.name, "patch_source": self.patch.source,
            "patch_text": patch_text, "sample_rate": self.sample_rate, "block_frames": self.block_frames,
            "engine_seed": s.seed, "melody_seed": self.patch.melody.seed + s.seed if s.melody else None,
            "melody_channel": self.melody_channel + 1, "melody_mode": self._melody_settings.mode if s.melody else None,
            "clock": s.clock, "bpm": s.bpm, "midi_api": self.midi_api, "input": s.input_name, "virtual": s.virtual,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    # ------------------------------------------------------------------ the MIDI input thread
    def _on_midi(self, message) -> None:
        """rtmidi's thread (portaudio backend): stamp the message with the frame it will play at, and
        queue it for the audio callback."""
        arrival = time.perf_counter()
        start, t0_us, n = self.rt.published()
        offset = int((arrival - t0_us * 1e-6) * self.sample_rate)
        frame = start + n + min(max(offset, 0), n - 1)  # one block on, at its place in the block
        if not message:
            return
        if len(self._inbox) >= MAX_INBOX and message[0] < 0xF0 and not _is_note_off(message):
            self._inbox_dropped += 1  # (the cycle counts a flood within a block; this, the queue's)
            return
        self._inbox.append((frame, message))

    # ------------------------------------------------------------------ the audio thread
    def _count_xrun(self) -> None:
        self.stats.xruns += 1

    def _callback(self, outdata, frames, time_info, status) -> None:
        """PortAudio's callback (the portaudio backend): the compiled cycle, with the MIDI the rtmidi
        thread stamped as this block's input, and its MIDI out handed to the sender thread."""
        t0 = time.perf_counter()
        rt = self.rt
        ls = rt.ls
        i = ls[cb.L_CALLBACKS] % TIMING_HISTORY
        try:
            if status.output_underflow:
                self.stats.xruns += 1
            engine = self.engine
            start = engine.frame
            end = start + frames
            rows = self._pa_rows
            n = 0
            inbox = self._inbox
            while inbox and n < len(rows):
                frame, message = inbox.popleft()
                if frame < start:
                    ls[cb.L_LATE_INPUT] += 1
                    frame = start
                elif frame >= end:
                    frame = end - 1  # stamped against a late callback's time: play it in this block
                rows[n] = _message_row(frame - start, message)
                n += 1
            count = cb.cycle(engine.cfg, engine.bank.voices, engine.ch, engine.s, engine.tb, rt.live, start,
                             int(t0 * 1e6), frames, rows, n, outdata, self._pa_out)
            if self._worker_wake is not None:
                self._worker_wake()
            if count:
                for r in self._pa_out[:count]:
                    self._out_ready.append((0, tuple(int(x) for x in r[2 : 2 + r[1]])))
                try:
                    os.write(self._wake_w, b"x")
                except (BlockingIOError, OSError):
                    pass  # the sender is already awake (the pipe is full of wake-ups)
        except Exception as e:  # never let an exception kill the stream silently
            outdata.fill(0.0)
            self._audio_failed(e)
        rt.live.durations[i] = int((time.perf_counter() - t0) * 1e6)

    def _all_off_messages(self) -> list[list[int]]:
        """A note-off for every note liveart ever sent out (some gear ignores CC 123)."""
        return [[0x80 | int(c), int(n), 0] for c, n in zip(*np.nonzero(self.rt.live.ever_out))]

    def _audio_failed(self, e: BaseException) -> None:
        if self._error is None:
            self._error = f"audio callback: {type(e).__name__}: {e}"
            self._error_trace = traceback.format_exc()
        self._stop.set()

    # ------------------------------------------------------------------ the conductor
    def _frame_now(self) -> float:
        start, t0_us, _n = self.rt.published()
        return start + (self._clock_us() - t0_us) * 1e-6 * self.sample_rate

    # ------------------------------------------------------------------ the MIDI sender
    def _wake_sender(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass

    def _sender(self) -> None:
        """The portaudio backend's MIDI output thread, woken through a pipe by the audio callback."""
        raise_priority()
        out = self.midi_out
        try:
            while True:
                try:
                    os.read(self._wake_r, 4096)
                except OSError:
                    return
                ready = self._out_ready
                while ready:
                    _frame, message = ready.popleft()
                    if message == "quit":
                        return
                    if message == "pause":  # between the sends of the final note-offs
                        time.sleep(FINAL_NOTE_OFF_GAP_SECONDS)
                        continue
                    if message == "all off":
                        for m in self._all_off_messages():
                            out.send_message(m)
                        continue
                    out.send_message(list(message))
        except Exception as e:
            self._fail(f"MIDI output: {type(e).__name__}: {e}")

    # ------------------------------------------------------------------ main thread
    def _fail(self, message: str) -> None:
        if self._error is None:
            self._error = message
            self._error_trace = traceback.format_exc()
        self._stop.set()

    def stop(self, reason: str = "stopped") -> None:
        self._stop_reason = self._stop_reason or reason
        self._stop.set()

    def run(self) -> LiveStats:
        """Play until stopped; then note-offs for everything, the take closed, the log written."""
        old_switch = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                handlers[sig] = signal.signal(sig, lambda signum, _f: self.stop(signal.Signals(signum).name))
        gc.collect()
        gc.freeze()  # what exists now is never scanned again: collections stay short
        awake = hold_cpu_awake()
        self.stats.cpu_awake = awake is not None
        started = time.perf_counter()
        try:
            self._worker_wake = self.timbre_worker.wake if self.timbre_worker is not None else None
            # Until the first callback publishes where the engine stands: frame 0 is now.
            self.rt.ls[cb.L_PUB_TIME] = self._clock_us()
            self.rt.ls[cb.L_PUB_FRAMES] = self.block_frames
            if self.jack is not None:
                self.jack.start(self.engine, self.rt,
                                self.timbre_worker.wake_fd if self.timbre_worker is not None else -1)
            else:
                self._pa_rows = np.zeros((MAX_INBOX, cb.MSG), np.int64)
                self._pa_out = np.zeros((256, cb.MSG), np.int64)
                import sounddevice as sd

                try:
                    self.stream = sd.OutputStream(
                        samplerate=self.sample_rate, blocksize=0 if self.on_jack else self.block_frames,
                        device=self.device["index"], channels=2, dtype="float32", latency="low",
                        callback=self._callback)
                except Exception as e:
                    raise PortError(f"cannot open audio output {self.device['hostapi_name']}: {self.device['name']} "
                                    f"at {self.sample_rate} Hz ({e})") from e
                if self.midi_out is not None:
                    self._start_thread(self._sender, "liveart-midi-out")
                self.stream.start()
            self._start_thread(self._conductor, "liveart-conductor")
            if self.display is not None:
                self._start_thread(self._feed_display, "liveart-visual-feed")
            if os.environ.get(GIL_HOG_ENV):
                self._gil_holds: list[int] = []
                self._start_thread(self._gil_hog, "liveart-test-gil-hog")
            main_priority = os.sched_getscheduler(0) if hasattr(os, "sched_getscheduler") else None
            raise_priority()
            try:
                self._main_loop(started)
            finally:
                if main_priority is not None:
                    try:
                        os.sched_setscheduler(0, main_priority, os.sched_param(0))
                    except OSError:
                        pass
        finally:
            self._finish()
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            gc.unfreeze()
            sys.setswitchinterval(old_switch)
            if awake is not None:
                awake.close()
        if self._error:
            raise LiveartError(self._error)
        return self.stats

    def _start_thread(self, target, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _main_loop(self, started: float) -> None:
        s = self.settings
        next_status = next_flush = next_poll = 0.0
        while not self._stop.is_set():
            now = time.perf_counter()
            if s.duration_seconds is not None and now - started >= s.duration_seconds:
                self.stop("duration")
                break
            if now >= next_flush:
                self._flush_take()
                next_flush = now + TAKE_FLUSH_SECONDS
            if now >= next_poll:
                self._poll_inputs()
                next_poll = now + RECONNECT_POLL_SECONDS
            if s.status and now >= next_status:
                self._print_status(now - started)
                next_status = now + (STATUS_SECONDS if self.out.isatty() else STATUS_SECONDS_NOT_TTY)
            if self.jack is not None and self.jack.shutdown_reason:
                self._fail(f"the JACK server shut liveart out ({self.jack.shutdown_reason})")
            elif self.stream is not None and not self.stream.active:
                self._fail("the audio stream stopped (the audio device went away?)")
            self._stop.wait(0.05)

    def _gil_hog(self) -> None:
        """Tests: hold the GIL for GIL_HOG_ENV milliseconds at a time (a C call made without
        releasing it), counting the callbacks that ran meanwhile."""
        import ctypes

        usleep = ctypes.PyDLL(None).usleep
        usleep.argtypes = [ctypes.c_uint]
        hold_us = int(float(os.environ[GIL_HOG_ENV]) * 1000)
        ls = self.rt.ls
        while not self._stop.wait(0.01):
            before = int(ls[cb.L_CALLBACKS])
            usleep(hold_us)
            self._gil_holds.append(int(ls[cb.L_CALLBACKS]) - before)

    def _feed_display(self) -> None:
        """What the engine played, to the visual display's process, batched every few milliseconds:
        the onsets, the loudness (RMS over the blocks) and the timbre places when a note began."""
        feed, display = self.rt.visual, self.display
        while not self._stop.wait(VISUAL_FEED_SECONDS):
            rows = feed.pop_many()
            if not len(rows):
                continue
            onsets = [tuple(int(x) for x in r[3:7]) for r in rows if r[3] >= 0]
            blocks = {}  # (start, end) → rms: one row per onset, the block's figures repeated
            for r in rows:
                blocks[(int(r[0]), int(r[1]))] = float(r[2])
            energy = sum(x * x for x in blocks.values())
            places = self.engine.state.timbre_positions
            display.feed(int(rows[0, 0]), int(rows[-1, 1]), (energy / len(blocks)) ** 0.5, onsets,
                         np.array(places) if onsets and places is not None else None)

    def _poll_inputs(self) -> None:
        for midi_in in self._inputs + ([self.jack] if self.jack is not None else []):
            change = midi_in.poll()
            if change == "lost":
                # Notes held on the controller would hang: release them (the take records it).
                self._release_input_notes()
                self._note(f"MIDI input {midi_in.port_name!r} went away; playing on, waiting for it to come back")
            elif change == "back":
                self._note(f"MIDI input {midi_in.port_name!r} is back")

    def _all_inputs(self) -> list:
        inputs = list(self._inputs)
        if self.jack is not None and self.jack.input_name is not None:
            inputs.append(self.jack)
        return inputs

    def _release_input_notes(self) -> None:
        frame = int(self._frame_now()) + self.block_frames
        main = self.rt.main
        for channel, note in zip(*np.nonzero(self.rt.live.held_keys)):
            main.push([frame, ev.NOTE_OFF, int(channel), int(note), 0])
        for channel in range(16):  # and the sustain pedal, in case it was down
            main.push([frame, ev.CONTROL_CHANGE, channel, ev.CC_SUSTAIN, 0])

    def _note(self, text: str) -> None:
        if self.settings.status:
            self.out.write("\r\033[K" if self.out.isatty() else "")
        self.out.write(f"liveart: {text}\n")
        self.out.flush()

    def _take_played(self) -> None:
        for row in self.rt.played.pop_many():
            self.take.add(int(row[0]), bytes(int(x) for x in row[2 : 2 + row[1]]))

    def _flush_take(self) -> None:
        if self.take is None:
            return
        self._take_played()
        self.take.flush(self.rt.published()[0])

    def timing(self) -> dict:
        """Figures of the callback, the models and the queues so far."""
        self._sync_stats()
        n = min(self.stats.callbacks, TIMING_HISTORY)  # the ring is full once n == TIMING_HISTORY
        live = self.rt.live
        d = live.durations[:n] * 1e-3 if n else np.zeros(1)
        wake = live.wake_frames[:n]
        block_ms = self.block_frames / self.sample_rate * 1e3
        melody = np.array(self._melody_ms) if self._melody_ms else np.zeros(1)
        worker = self.timbre_worker
        decode = np.array(worker.decode_seconds) * 1e3 if worker is not None and worker.decode_seconds else np.zeros(1)
        return {
            "callback_ms_p50": float(np.percentile(d, 50)), "callback_ms_p99": float(np.percentile(d, 99)),
            "callback_ms_max": float(d.max()), "block_ms": block_ms,
            "load_p99": float(np.percentile(d, 99)) / block_ms,
            "melody_step_ms_p50": float(np.percentile(melody, 50)), "melody_step_ms_p99": float(np.percentile(melody, 99)),
            "timbre_decode_ms_p99": float(np.percentile(decode, 99)),
            "timbre_late_frames": self.engine.stats.timbre_late,
            "callback_start_frames_p99": float(np.percentile(wake, 99)) if n else 0.0,
            "callback_start_frames_max": int(wake.max()) if n else 0,
            "callbacks_over_period": int(np.count_nonzero(
                wake + live.durations[:n] * 1e-6 * self.sample_rate > self.block_frames)) if n else 0,
            "engine_late_events": self.engine.stats.late_events,
            "voices": self.engine.sounding_voices(),
        }

    def _sync_stats(self) -> None:
        """The cycle's counters into :attr:`stats`."""
        for name, value in self.rt.counters().items():
            setattr(self.stats, name, value)
        self.stats.input_dropped += self._inbox_dropped

    def _print_status(self, elapsed: float) -> None:
        t = self.timing()
        st = self.stats
        inputs = " ".join(("in ok" if i.status.connected else "in LOST") for i in self._all_inputs())
        bpm = getattr(getattr(self, "clock", None), "bpm", None)
        line = (f"{int(elapsed // 60):02d}:{elapsed % 60:04.1f}  callback {t['callback_ms_p50']:.2f}/"
                f"{t['callback_ms_p99']:.2f} ms of {t['block_ms']:.2f} (p50/p99)  xruns {st.xruns}  "
                f"voices {t['voices']}  model notes {st.generated_notes} (late {st.generated_late})  "
                f"timbre late {t['timbre_late_frames']}  {f'{bpm:.1f} bpm  ' if bpm else ''}{inputs}")
        if self.out.isatty():
            self.out.write("\r\033[K" + line[: max(20, os.get_terminal_size(self.out.fileno()).columns - 1)])
        else:
            self.out.write(line + "\n")
        self.out.flush()

    def _finish(self) -> None:
        """The orderly end: the model's note-offs, every voice released, every note sent out ended,
        the clock stopped, the take closed, the log written."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        for thread in self._threads:
            if thread.name == "liveart-conductor":
                thread.join(timeout=2.0)
        if self.jack is not None:
            audio_ok = self.jack.active and not self.jack.shutdown_reason
        else:
            audio_ok = self.stream is not None and self.stream.active
        rt = self.rt
        if rt is not None:
            rt.main.push([0, cb.RELEASE_ALL, 0, 0, 0])
        if audio_ok:  # let the audio play the note-offs and the releases
            deadline = time.perf_counter() + STOP_RELEASE_SECONDS
            while time.perf_counter() < deadline and (len(rt.main) or self.engine.sounding_voices()):
                time.sleep(0.01)
        if self.jack is not None:
            # The last note-offs go out through the process callback, then the client closes. JACK
            # can drop a cycle's MIDI at an xrun, so they go out FINAL_NOTE_OFF_SENDS times,
            # FINAL_NOTE_OFF_GAP_CALLBACKS callbacks apart (a receiver that drops a buffer read
            # again, as RepeatedMidi does, still sees each send as new).
            deadline = time.perf_counter() + 0.5
            callbacks = lambda: int(rt.ls[cb.L_CALLBACKS])  # noqa: E731
            for i in range(FINAL_NOTE_OFF_SENDS):
                after = callbacks() + (FINAL_NOTE_OFF_GAP_CALLBACKS if i else 0)
                while audio_ok and callbacks() < after and time.perf_counter() < deadline:
                    time.sleep(0.002)
                rt.now.push([0, cb.OFFS_EVER, 0, 0, 0])
                while audio_ok and rt.offs_pending() and time.perf_counter() < deadline:
                    time.sleep(0.002)
            self.jack.close()
        if self.stream is not None:
            try:
                self.stream.stop()
                self.stream.close()
            except Exception:
                pass
        if self.jack is None and rt is not None:
            # Whatever the audio did not get to play is still sent: no note left hanging out there.
            for row in rt.out.pop_many():
                message = tuple(int(x) for x in row[2 : 2 + row[1]])
                if len(message) == 3 and message[0] & 0xF0 == 0x90 and message[2]:
                    rt.live.ever_out[message[0] & 0x0F, message[1]] = 1  # (the audio has stopped: no race)
                self._out_ready.append((0, message))
            for i in range(FINAL_NOTE_OFF_SENDS):  # (python-rtmidi's JACK port can lose a cycle too)
                if i:
                    self._out_ready.append((0, "pause"))
                self._out_ready.append((0, "all off"))
            self._out_ready.append((0, "quit"))
            self._wake_sender()
        for thread in self._threads:
            thread.join(timeout=2.0)
        if self.jack is None and self.midi_out is not None and not any(
                t.name == "liveart-midi-out" and t.is_alive() for t in self._threads):
            try:  # the sender never ran (or died): its last note-offs are sent here
                for m in self._all_off_messages():
                    self.midi_out.send_message(m)
            except Exception:
                pass
        end_frame = self.engine.frame
        if self.take is not None:
            try:
                self._take_played()
                self.take.close(end_frame)
            except Exception as e:
                self._error = self._error or f"saving the take: {e}"
        self._write_log(end_frame)
        if self.settings.status:
            if self.out.isatty():
                self.out.write("\n")
            self._print_status(end_frame / self.sample_rate)
        self._close_ports()

    def _write_log(self, end_frame: int) -> None:
        if self.log_path is None:
            return
        self._sync_stats()
        log = {"seconds": end_frame / self.sample_rate, "stop": self._stop_reason, "error": self._error,
               "stats": asdict(self.stats), "timing": self.timing(), "take": str(self.take.path),
               "device": f"{self.device['hostapi_name']}: {self.device['name']}", "midi_api": self.midi_api,
               "backend": self.backend,
               "inputs": [{"port": i.port_name, **asdict(i.status)} for i in self._all_inputs()]}
        if self.timbre_worker is not None:
            log["timbre_failures"] = self.timbre_worker.failures
        if hasattr(self, "_gil_holds"):
            log["gil_hog"] = {"hold_ms": float(os.environ[GIL_HOG_ENV]), "callbacks_per_hold": self._gil_holds}
        if self.display is not None:
            figures = self.display.status()
            if figures is not None:
                reports = figures.pop("reports")
                figures["page_fps"] = [r.get("fps") for r in reports][-10:]  # the pages' last reports
                log["visual"] = figures
        try:
            tmp = self.log_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(log, indent=1, default=str))
            os.replace(tmp, self.log_path)
        except OSError:
            pass

    def _close_ports(self) -> None:
        for midi_in in self._inputs:
            try:
                midi_in.close()
            except Exception:
                pass
        if self.jack is not None:
            self.jack.close()
            self.midi_out = None
        if self.midi_out is not None:
            try:
                self.midi_out.close_port()
                self.midi_out.delete()
            except Exception:
                pass
            self.midi_out = None
        if getattr(self, "timbre_worker", None) is not None:
            self.timbre_worker.close()
        if self.display is not None:
            self.display.close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass


def play(patch: Patch, settings: LiveSettings, out=sys.stderr) -> LiveStats:
    """Open everything, play until stopped, close everything."""
    host = LiveHost(patch, settings, out=out)
    return host.run()
