"""The live host: a controller (or a DAW) in, notes and sound out, a take saved as it happens.

Threads, and what each may do (the audio callback never waits for any other):

- **audio** (sounddevice's callback, on the audio server's real-time thread): takes the stamped
  MIDI and the conductor's notes from lock-free deques, schedules them into the
  :class:`~liveart.engine.Engine` at their frames, renders the block, hands what was played to the
  take and the MIDI sender, and times itself. No model call, no lock, no I/O but one byte written
  to a pipe to wake the sender, no logging.
- **MIDI input** (rtmidi's thread): stamps each message with the frame it will sound at (its
  arrival time, one block on: latency one block, no jitter from the block grid) and queues it.
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
from .realtime import RepeatedMidi, hold_cpu_awake, raise_priority

SWITCH_INTERVAL_SECONDS = 0.0005  # Python's GIL hand-over interval while playing (default 5 ms > a block)
MAX_INBOX = 512  # queued input messages; beyond this a flood's note-ons are dropped (note-offs never)
MAX_EVENTS_PER_BLOCK = 64  # input events taken into one block; the rest wait for the next
LEAD_SECONDS = 0.004  # the conductor decides a step this long (plus two blocks) before it sounds
CONDUCTOR_POLL_SECONDS = 0.005  # the conductor looks at its input at least this often
STATUS_SECONDS = 0.25
STATUS_SECONDS_NOT_TTY = 10.0  # into a log file or a pipe: a line now and then, not four a second
# Threads that take the GIL run at a real-time priority under the audio thread's where the system
# allows it (JACK users have rtprio limits): a GIL holder preempted by some other program would
# make the audio callback wait. Best effort; nothing changes where it is not allowed.
TAKE_FLUSH_SECONDS = 0.25  # at most this much of a take can be lost (a bar is longer at any usable tempo)
RECONNECT_POLL_SECONDS = 0.5
VISUAL_FEED_SECONDS = 0.008  # what the engine played goes to the visual display's process this often
TIMING_HISTORY = 1 << 16  # callback durations kept (about 3 minutes at 375 callbacks a second)
FINAL_NOTE_OFF_SENDS = 2  # JACK: the final note-offs go out this many times ...
FINAL_NOTE_OFF_GAP_CALLBACKS = 8  # ... this many callbacks apart (more than RepeatedMidi's window)
FINAL_NOTE_OFF_GAP_SECONDS = 0.03  # portaudio backend: the same, in time
STOP_RELEASE_SECONDS = 0.4  # after the final note-offs the audio runs on this long, so releases do not click
MAX_BLOCK_FRAMES = 8192
MAX_CATCH_UP_FRAMES = 4096  # after an xrun, the JACK backend renders up to this many missed frames unheard
CLOCK_START, CLOCK_TICK, CLOCK_CONTINUE, CLOCK_STOP, SONG_POSITION = 0xFA, 0xF8, 0xFB, 0xFC, 0xF2
DRUM_CHANNEL = 9
# Markers the conductor and main thread send through the audio thread's queue.
_PANIC = 1  # silence every voice now (all sound off on every channel)
_RELEASE_ALL = 2  # release every note now (the end of the performance)


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
    xruns: int = 0  # blocks PortAudio reported as underflowed
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
    cpu_awake: bool = False  # the CPU wake-up latency request (PM QoS 0) was held while playing
    errors: list = field(default_factory=list)


def _is_note_off(message) -> bool:
    kind = message[0] & 0xF0
    return kind == 0x80 or (kind == 0x90 and len(message) > 2 and message[2] == 0)


def _event_from_message(frame: int, message) -> ev.Event | None:
    """A channel message (list of ints) → an engine event, or None for what the engine ignores."""
    if not message:
        return None
    status = message[0]
    kind, channel = status & 0xF0, status & 0x0F
    if len(message) < 2 and kind != 0xC0:
        return None
    if kind == 0x90 and len(message) >= 3:
        return ev.note_on(frame, channel, message[1] & 0x7F, message[2] & 0x7F)
    if kind == 0x80 and len(message) >= 3:
        return ev.note_off(frame, channel, message[1] & 0x7F)
    if kind == 0xB0 and len(message) >= 3:
        return ev.control_change(frame, channel, message[1] & 0x7F, message[2] & 0x7F)
    if kind == 0xE0 and len(message) >= 3:
        return ev.pitch_bend(frame, channel, ((message[2] & 0x7F) << 7 | (message[1] & 0x7F)) - 8192)
    if kind == 0xC0 and len(message) >= 2:
        return ev.program_change(frame, channel, message[1] & 0x7F)
    return None


def _message_of(e: ev.Event) -> tuple:
    if e.kind == ev.NOTE_ON:
        return (0x90 | e.channel, e.a, e.b)
    if e.kind == ev.NOTE_OFF:
        return (0x80 | e.channel, e.a, 0)
    if e.kind == ev.CONTROL_CHANGE:
        return (0xB0 | e.channel, e.a, e.b)
    if e.kind == ev.PITCH_BEND:
        v = e.a + 8192
        return (0xE0 | e.channel, v & 0x7F, v >> 7)
    if e.kind == ev.PROGRAM_CHANGE:
        return (0xC0 | e.channel, e.a)
    return ()


class LiveHost:
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
        self._inbox: deque = deque()  # (frame, message) for the audio thread
        self._control: deque = deque(maxlen=65536)  # (frame, message) for the conductor
        self._gen: deque = deque()  # engine events and markers from the conductor / main
        self._out_pending: deque = deque()  # (frame, message) to send once played
        self._out_ready: deque = deque()
        self._record: deque = deque()  # (frame, message) played, for the take
        self._visual_feed: deque | None = None  # (start, end frame, rms, onsets) of each block, for the display
        self.display = None
        self._published = (0, time.perf_counter(), 128)  # (block start frame, its wall time, frames)
        self._durations = np.zeros(TIMING_HISTORY)
        self._input_held = np.zeros((16, 128), bool)  # the player's keys down (the audio thread's view)
        self._wake_frames = np.zeros(TIMING_HISTORY, np.int32)  # JACK: the callback's start, frames into its cycle
        self._melody_ms = deque(maxlen=4096)
        self._threads: list[threading.Thread] = []
        self._inputs = []
        self.jack = None
        self.backend = "portaudio"
        self.midi_out = None
        self.stream = None
        self.take = None
        self.log_path: Path | None = None
        self._sounding_out: set[tuple[int, int]] = set()
        self._ever_out: set[tuple[int, int]] = set()  # (channel, note) of every note-on sent
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
        if s.takes_dir is not None:
            from .takes import TakeWriter

            self.take = TakeWriter(s.takes_dir, self.sample_rate, self._take_meta())
            self.log_path = self.take.path.with_suffix(".log.json")
        if s.visual is not None:
            from ..visual.generator import resolve_visual_model
            from ..visual.live import LiveDisplay

            self.display = LiveDisplay(resolve_visual_model(s.visual_model), s.visual, self.sample_rate)
            self._visual_feed = deque(maxlen=65536)
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
        """rtmidi's thread: stamp the message with the frame it will play at, and queue it."""
        arrival = time.perf_counter()
        start, t0, n = self._published
        offset = int((arrival - t0) * self.sample_rate)
        frame = start + n + min(max(offset, 0), n - 1)  # one block on, at its place in the block
        self.stats.input_messages += 1
        status = message[0] if message else 0
        if status >= 0xF0:  # clock and transport: the conductor's
            if self.settings.clock == "external":
                self._control.append((frame, message))
            return
        if len(self._inbox) >= MAX_INBOX and not _is_note_off(message):
            self.stats.input_dropped += 1
            return
        self._inbox.append((frame, message))

    # ------------------------------------------------------------------ the audio thread
    def _schedule_input(self, frame: int, message) -> None:
        """A player's message at ``frame`` (in this block): into the engine, the take, the conductor."""
        e = _event_from_message(frame, message)
        if e is None:
            return
        self.engine.schedule(e)
        self._record.append((frame, message))
        if e.kind == ev.NOTE_ON:
            self._input_held[e.channel, e.a] = True
        elif e.kind == ev.NOTE_OFF:
            self._input_held[e.channel, e.a] = False
        if self.partner is not None:
            self._control.append((frame, message))

    def _block(self, start: int, frames: int, out: np.ndarray) -> None:
        """The audio thread's work for one block: queued input and model notes into the engine at
        their frames, then the engine's DSP into ``out`` (shape (frames, 2), float32)."""
        engine = self.engine
        end = start + frames
        record = self._record
        inbox = self._inbox
        taken = 0
        while inbox and taken < MAX_EVENTS_PER_BLOCK:
            frame, message = inbox.popleft()
            taken += 1
            if frame < start:
                self.stats.late_input += 1
                frame = start
            elif frame >= end:
                frame = end - 1  # stamped against a late callback's time: play it in this block
            self._schedule_input(frame, message)
        gen = self._gen
        while gen:
            item = gen.popleft()
            if item == _PANIC or item == _RELEASE_ALL:
                cc = ev.CC_ALL_SOUND_OFF if item == _PANIC else ev.CC_ALL_NOTES_OFF
                for c in range(16):
                    engine.schedule(ev.control_change(start, c, ev.CC_SUSTAIN, 0))
                    engine.schedule(ev.control_change(start, c, cc, 0))
                    record.append((start, (0xB0 | c, ev.CC_SUSTAIN, 0)))
                    record.append((start, (0xB0 | c, cc, 0)))
                continue
            if item.frame < start:
                self.stats.generated_late += 1
                late = start - item.frame
                if late > self.stats.generated_late_max_frames:
                    self.stats.generated_late_max_frames = late
                item = item._replace(frame=start)
            engine.schedule(item)
            record.append((item.frame, _message_of(item)))
        engine.render_into(out)
        feed = self._visual_feed
        if feed is not None:
            state = engine.state
            feed.append((start, start + frames, state.rms, state.onsets))  # (a new list each block that has onsets)

    def _count_xrun(self) -> None:
        self.stats.xruns += 1

    def _timed(self, t0: float) -> None:
        i = self.stats.callbacks
        self._durations[i % TIMING_HISTORY] = time.perf_counter() - t0
        self.stats.callbacks = i + 1

    def _callback(self, outdata, frames, time_info, status) -> None:
        """PortAudio's callback (the portaudio backend)."""
        t0 = time.perf_counter()
        start = self.engine.frame
        self._published = (start, t0, frames)
        try:
            if status.output_underflow:
                self.stats.xruns += 1
            self._block(start, frames, outdata)
            end = start + frames
            pending = self._out_pending
            if pending and pending[0][0] < end:
                ready = self._out_ready
                while pending and pending[0][0] < end:
                    ready.append(pending.popleft())
                try:
                    os.write(self._wake_w, b"x")
                except (BlockingIOError, OSError):
                    pass  # the sender is already awake (the pipe is full of wake-ups)
        except Exception as e:  # never let an exception kill the stream silently
            outdata.fill(0.0)
            self._audio_failed(e)
        self._timed(t0)

    def _jack_process(self, frames: int) -> None:
        """The JACK backend's process callback: MIDI in at its frame offsets, audio and MIDI out."""
        t0 = time.perf_counter()
        start = self.engine.frame
        self._published = (start, t0, frames)
        jio = self.jack
        i = self.stats.callbacks % TIMING_HISTORY
        client = jio.client
        cycle = client.last_frame_time
        self._wake_frames[i] = client.frame_time - cycle  # how late into its cycle it started
        try:
            # Cycles the server ran without liveart (an xrun): the engine catches up on them, unheard,
            # so its time stays locked to the server's (the clock, MIDI out, the take keep their place).
            gap = (cycle - self._jack_next_cycle) & 0xFFFFFFFF if self._jack_next_cycle is not None else 0
            hold = False
            if 0 < gap <= MAX_CATCH_UP_FRAMES:
                self._block(start, gap, self._jack_scratch[:gap])
                self.stats.caught_up_frames += gap
                start = self.engine.frame
                self._published = (start, t0, frames)
            elif 0xFFFFFFFF - MAX_CATCH_UP_FRAMES < gap:
                # A cycle the engine has already played. JACK2 runs its graph again when a client did
                # not finish in time, and a callback that ran late read the next cycle's start as its
                # own: the engine is ahead of the server. Wait here (silence, MIDI in kept) until the
                # server's cycles meet the engine's time again, so it stays locked (no slip).
                hold = True
                self.stats.held_frames += frames
            elif MAX_CATCH_UP_FRAMES < gap < 0x80000000:
                self.stats.slipped_frames += gap
            if not hold:
                self._jack_next_cycle = (cycle + frames) & 0xFFFFFFFF
            taken = 0
            external = self.settings.clock == "external"
            # After an xrun JACK2 can hand liveart MIDI it has already read (RepeatedMidi says how).
            for offset, message in self._jack_repeats.read(cycle, jio.midi_in.incoming_midi_events()):
                self.stats.input_messages += 1
                if not message:
                    continue
                if message[0] >= 0xF0:
                    if external:
                        self._control.append((start + offset, message))
                    continue
                taken += 1
                if taken > MAX_EVENTS_PER_BLOCK and not _is_note_off(message):
                    self.stats.input_dropped += 1  # a flood: note-offs always go through
                    continue
                self._schedule_input(start + offset, message)
            if hold:
                for p in jio.audio_out:
                    p.get_array().fill(0.0)
                jio.midi_out.clear_buffer()
                self._timed(t0)
                return
            out = self._jack_buffer[:frames]
            self._block(start, frames, out)
            jio.audio_out[0].get_array()[:] = out[:, 0]
            jio.audio_out[1].get_array()[:] = out[:, 1]
            port = jio.midi_out
            port.clear_buffer()
            ready = self._out_ready
            while ready:  # panic and the final note-offs: at once (what does not fit, next cycle)
                _frame, message = ready.popleft()
                messages = self._out_messages(message)
                for i, m in enumerate(messages):
                    buffer = port.reserve_midi_event(0, len(m))
                    if not buffer:  # the port's buffer is full
                        ready.appendleft((0, list(messages[i:])))
                        break
                    buffer[:] = bytes(m)
                else:
                    continue
                break
            pending = self._out_pending
            end = start + frames
            last = 0
            while pending and pending[0][0] < end:
                frame, message = pending.popleft()
                last = max(last, frame - start)  # JACK wants offsets in order
                for m in self._out_messages(message):
                    port.write_midi_event(last, m)
        except Exception as e:
            for p in jio.audio_out:
                p.get_array().fill(0.0)
            self._audio_failed(e)
        self._timed(t0)

    def _out_messages(self, message):
        """What goes out for a queued message: itself, or for a marker the note-offs of every note
        liveart sent that still sounds (each with its own note-off: some gear ignores CC 123)."""
        sounding = self._sounding_out
        if message == "panic":
            offs = [(0x80 | channel, note, 0) for channel, note in sorted(sounding)]
            sounding.clear()
            return offs
        if message == "all off":  # the end: every note ever sent gets a note-off, in case one got lost
            offs = [(0x80 | channel, note, 0) for channel, note in sorted(self._ever_out)]
            sounding.clear()
            return offs
        if message == "quit":
            return ()
        if isinstance(message, list):  # the rest of a long list of note-offs (a full JACK buffer)
            return message
        kind = message[0] & 0xF0
        if kind == 0x90 and message[2] > 0:
            sounding.add((message[0] & 0x0F, message[1]))
            self._ever_out.add((message[0] & 0x0F, message[1]))
        elif kind in (0x80, 0x90):
            sounding.discard((message[0] & 0x0F, message[1]))
        return (message,)

    def _audio_failed(self, e: BaseException) -> None:
        if self._error is None:
            self._error = f"audio callback: {type(e).__name__}: {e}"
            self._error_trace = traceback.format_exc()
        self._stop.set()

    # ------------------------------------------------------------------ the conductor
    def _frame_now(self) -> float:
        start, t0, _n = self._published
        return start + (time.perf_counter() - t0) * self.sample_rate

    def _conductor(self) -> None:
        raise_priority()
        try:
            self._conduct()
        except Exception as e:
            self._fail(f"melody/clock thread: {type(e).__name__}: {e}")

    def _conduct(self) -> None:
        from ..midi.clock import ClockFollower, InternalClock
        from ..melody.play import apply_control, to_events

        s = self.settings
        sr = self.sample_rate
        partner = self.partner
        lead = int(LEAD_SECONDS * sr)
        internal = s.clock == "internal"
        # The internal clock starts a little after the stream, so its first ticks go out on time.
        clock = InternalClock(sr, s.bpm, start_frame=int(self._frame_now()) + 2 * self.block_frames + lead) \
            if internal else ClockFollower(sr)
        self.clock = clock
        send_clock = internal and self.midi_out is not None
        if send_clock:
            self._out_pending.append((clock.start_frame, (CLOCK_START,)))
        ticks_until = clock.start_frame if internal else 0
        last_frame = -1  # the frame of the last step played
        base = 0  # partner step = clock position + base (the partner's steps only increase)
        rebase = True
        partner_last = -1
        cc_map = self.patch.cc_map()
        chan = self.melody_channel
        while not self._stop.is_set():
            now = self._frame_now()
            horizon = now + 2 * self.block_frames + lead
            batch: list[tuple[int, tuple]] = []
            # -- input: the player's notes, controllers, the external clock
            control = self._control
            while control:
                frame, message = control.popleft()
                status = message[0]
                if status >= 0xF0:
                    what = clock.feed(frame, message)
                    if what == "stop" and partner is not None:
                        self._generated(to_events(partner.finish(), frame, chan))
                    elif what in ("start", "continue", "position"):
                        # Partner steps only increase: the song position maps on from the next step.
                        rebase = True
                        last_frame = -1
                    if clock.bpm and partner is not None:
                        partner.set_step_seconds(60.0 / (clock.bpm * 4))
                    continue
                kind, channel = status & 0xF0, status & 0x0F
                if kind in (0x80, 0x90) and partner is not None and channel not in (chan, DRUM_CHANNEL):
                    pos = clock.position_steps(frame)
                    if pos is None:
                        continue
                    t = pos + base
                    if kind == 0x90 and message[2] > 0:
                        partner.note_on(t, message[1], message[2])
                    else:
                        partner.note_off(t, message[1])
                elif kind == 0xB0:
                    self._controller(frame, channel, message[1], message[2], cc_map, apply_control, to_events)
            # -- the internal clock's ticks, sent out as it runs
            if send_clock:
                for _tick, f in clock.ticks_between(ticks_until, int(horizon)):
                    batch.append((f, (CLOCK_TICK,)))
                    self.stats.clock_ticks_out += 1
                ticks_until = max(ticks_until, int(horizon))
            # -- the model's steps due before the horizon, each once, in order (late ones play late)
            if partner is not None:
                while True:
                    nxt = clock.next_step(max(last_frame + 1, int(now) - self.block_frames))
                    if nxt is None or nxt[1] >= horizon:
                        break
                    pos, frame = nxt
                    if rebase:  # a new run of the clock: its position 0 is a bar line
                        base = partner_last + 1 - pos
                        partner.set_meter(partner.meter, bar_origin_step=base + 0)
                        rebase = False
                    k = pos + base
                    last_frame = frame
                    if k <= partner_last:
                        continue
                    t_step = time.perf_counter()
                    actions = partner.step(k)
                    ms = (time.perf_counter() - t_step) * 1e3
                    self._melody_ms.append(ms)
                    self.stats.melody_steps += 1
                    self.stats.melody_step_max_ms = max(self.stats.melody_step_max_ms, ms)
                    partner_last = k
                    self._generated(to_events(actions, frame, chan))
            if batch:
                batch.sort(key=lambda x: x[0])
                self._out_pending.extend(batch)
            # -- sleep until the next thing to do
            wait = CONDUCTOR_POLL_SECONDS
            if partner is not None:
                nxt = clock.step_frame(int(clock.position_steps(int(now)) or 0) + 1) if clock.running else None
                if nxt is not None:
                    due = (nxt - 2 * self.block_frames - lead - self._frame_now()) / sr
                    wait = min(wait, max(due, 0.0005))
            self._stop.wait(wait)
        if partner is not None:
            self._generated(to_events(partner.finish(), int(self._frame_now()) + self.block_frames, chan))
        if send_clock:
            self._out_pending.append((int(self._frame_now()), (CLOCK_STOP,)))

    def _generated(self, events: list[ev.Event]) -> None:
        for e in events:
            self._gen.append(e)
            if self.midi_out is not None:
                self._out_pending.append((e.frame, _message_of(e)))
            if e.kind == ev.NOTE_ON:
                self.stats.generated_notes += 1

    def _controller(self, frame, channel, number, value, cc_map, apply_control, to_events) -> None:
        partner = self.partner
        if number in (ev.CC_ALL_NOTES_OFF, ev.CC_ALL_SOUND_OFF) and partner is not None:
            self._generated(to_events(partner.panic(), frame, self.melody_channel))
            return
        for m in cc_map.get(number, ()):
            if m.channel is not None and m.channel != channel:
                continue
            if m.param == "panic":
                if m.value(value) >= 0.5:
                    self.panic(frame)
            elif m.param.startswith("melody_") and partner is not None:
                settings, action = apply_control(partner.settings, m.param, m.value(value))
                if action == "panic":
                    self._generated(to_events(partner.panic(), frame, self.melody_channel))
                elif action == "resume":
                    partner.resume()
                if settings != partner.settings:
                    partner.configure(settings)

    def panic(self, frame: int | None = None) -> None:
        """Silence everything now: the model stops, every voice is cut, and every note liveart sent
        out gets its own note-off. (Conductor thread, or before the stream starts.)"""
        self.stats.panics += 1
        if self.partner is not None:
            from ..melody.play import to_events

            frame = int(self._frame_now()) if frame is None else frame
            for e in to_events(self.partner.panic(), frame, self.melody_channel):
                self._gen.append(e)
        self._gen.append(_PANIC)
        if self.midi_out is not None:
            self._out_ready.append((0, "panic"))
            self._wake_sender()

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
                    for m in self._out_messages(message):
                        out.send_message(list(m))
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
            if self.jack is not None:
                self._jack_buffer = np.zeros((MAX_BLOCK_FRAMES, 2), np.float32)
                self._jack_scratch = np.zeros((MAX_CATCH_UP_FRAMES, 2), np.float32)
                self._jack_next_cycle = None
                self._jack_repeats = RepeatedMidi(MAX_EVENTS_PER_BLOCK)
                self.jack.start(self._jack_process)
            else:
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

    def _feed_display(self) -> None:
        """What the engine played, to the visual display's process, batched every few milliseconds:
        the onsets, the loudness (RMS over the blocks) and the timbre places when a note began."""
        feed, display = self._visual_feed, self.display
        while not self._stop.wait(VISUAL_FEED_SECONDS):
            if not feed:
                continue
            onsets, energy, blocks, first = [], 0.0, 0, None
            while feed:
                start, end, rms, block_onsets = feed.popleft()
                first = start if first is None else first
                onsets.extend(block_onsets)
                energy += rms * rms
                blocks += 1
            places = self.engine.state.timbre_positions
            display.feed(first, end, (energy / blocks) ** 0.5, onsets,
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
        for channel, note in zip(*np.nonzero(self._input_held)):
            self._inbox.append((frame, [0x80 | int(channel), int(note), 0]))
        for channel in range(16):  # and the sustain pedal, in case it was down
            self._inbox.append((frame, [0xB0 | channel, ev.CC_SUSTAIN, 0]))

    def _note(self, text: str) -> None:
        if self.settings.status:
            self.out.write("\r\033[K" if self.out.isatty() else "")
        self.out.write(f"liveart: {text}\n")
        self.out.flush()

    def _flush_take(self) -> None:
        if self.take is None:
            return
        record = self._record
        while record:
            frame, message = record.popleft()
            self.take.add(frame, message)
        self.take.flush(self._published[0])

    def timing(self) -> dict:
        """Figures of the callback, the models and the queues so far."""
        n = min(self.stats.callbacks, TIMING_HISTORY)  # the ring is full once n == TIMING_HISTORY
        d = self._durations[:n] * 1e3 if n else np.zeros(1)
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
            "callback_start_frames_p99": float(np.percentile(self._wake_frames[:n], 99)) if n else 0.0,
            "callback_start_frames_max": int(self._wake_frames[:n].max()) if n else 0,
            "callbacks_over_period": int(np.count_nonzero(
                self._wake_frames[:n] + self._durations[:n] * self.sample_rate > self.block_frames)) if n else 0, "engine_late_events": self.engine.stats.late_events,
            "voices": self.engine.sounding_voices(),
        }

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
        self._gen.append(_RELEASE_ALL)
        if audio_ok:  # let the audio play the note-offs and the releases
            deadline = time.perf_counter() + STOP_RELEASE_SECONDS
            while time.perf_counter() < deadline and (self._gen or self.engine.sounding_voices()):
                time.sleep(0.01)
        if self.jack is not None:
            # The last note-offs go out through the process callback, then the client closes. JACK
            # can drop a cycle's MIDI at an xrun, so they go out FINAL_NOTE_OFF_SENDS times,
            # FINAL_NOTE_OFF_GAP_CALLBACKS callbacks apart (a receiver that drops a buffer read
            # again, as RepeatedMidi does, still sees each send as new).
            deadline = time.perf_counter() + 0.5
            for i in range(FINAL_NOTE_OFF_SENDS):
                after = self.stats.callbacks + (FINAL_NOTE_OFF_GAP_CALLBACKS if i else 0)
                while audio_ok and self.stats.callbacks < after and time.perf_counter() < deadline:
                    time.sleep(0.002)
                self._out_ready.append((0, "all off"))
                while audio_ok and self._out_ready and time.perf_counter() < deadline:
                    time.sleep(0.002)
            self._out_ready.clear()
            self.jack.close()
        if self.stream is not None:
            try:
                self.stream.stop()
                self.stream.close()
            except Exception:
                pass
        if self.jack is None:
            # Whatever the audio did not get to play is still sent: no note left hanging out there.
            while self._out_pending:
                self._out_ready.append(self._out_pending.popleft())
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
                for m in self._out_messages("all off"):
                    self.midi_out.send_message(list(m))
            except Exception:
                pass
        end_frame = self.engine.frame
        if self.take is not None:
            try:
                while self._record:
                    frame, message = self._record.popleft()
                    self.take.add(frame, message)
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
        repeats = getattr(self, "_jack_repeats", None)  # (counted there, not copied in every callback)
        if repeats is not None:
            self.stats.repeated_input, self.stats.repeated_input_moved = repeats.count, repeats.moved
        log = {"seconds": end_frame / self.sample_rate, "stop": self._stop_reason, "error": self._error,
               "stats": asdict(self.stats), "timing": self.timing(), "take": str(self.take.path),
               "device": f"{self.device['hostapi_name']}: {self.device['name']}", "midi_api": self.midi_api,
               "backend": self.backend,
               "inputs": [{"port": i.port_name, **asdict(i.status)} for i in self._all_inputs()]}
        if self.timbre_worker is not None:
            log["timbre_failures"] = self.timbre_worker.failures
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


class JackIO:
    """The JACK backend's client "liveart": MIDI in "liveart:midi_in" (a DAW or a controller connects
    to it; ``--in NAME`` connects one and follows it when it goes and comes back), MIDI out
    "liveart:midi_out" (the model's notes and the clock, at their exact frames), audio "liveart:out_0"
    and "liveart:out_1" (connected to the system's playback ports, or to ``audio_targets``)."""

    def __init__(self, client):
        from ..midi.ports import InputStatus

        self.client = client
        self.midi_in = self.midi_out = None  # registered at start(): ports appear once liveart is ready
        self.audio_out: list = []
        self.audio_targets: list[str] | None = None
        self.midi_targets: list[str] = []
        self.input_name: str | None = None
        self.port_name: str | None = None  # the controller's port, once connected
        self.status = InputStatus()
        self.xruns = 0
        self.shutdown_reason: str | None = None
        self.active = False
        self.on_xrun = None  # called on the server's notification thread

    @classmethod
    def open(cls, required: bool) -> "JackIO | None":
        """A client on the running JACK server; None (or, ``required``, a PortError) without one."""
        from ..midi.ports import CLIENT_NAME, quiet_stderr

        try:
            import jack
        except (ImportError, OSError) as e:
            if required:
                raise PortError(f"the jack backend needs JACK-Client and libjack (pip install JACK-Client; "
                                f"Debian: libjack-jackd2-0) ({e})") from e
            return None
        try:
            with quiet_stderr():
                client = jack.Client(CLIENT_NAME, no_start_server=True)
        except jack.JackError as e:
            if required:
                raise PortError("no JACK server is running (start one, e.g. 'jackd -d alsa', or use "
                                "--backend portaudio)") from e
            return None
        return cls(client)

    def find(self, name: str, midi: bool, output: bool, what: str) -> list[str]:
        """Full names of other clients' ports that ``name`` names (see
        :func:`~liveart.midi.ports.match_names`; audio: every port of the client it names, in order)."""
        from ..midi.ports import match_names

        ports = [p.name for p in self.client.get_ports(is_midi=midi, is_audio=not midi, is_output=output,
                                                       is_input=not output)
                 if not p.name.startswith(self.client.name + ":")]
        return match_names(ports, name, what, several=not midi)

    def want_input(self, name: str) -> None:
        self.input_name = name
        self.port_name = self.find(name, midi=True, output=True, what="MIDI input")[0]  # (a port that sends to us)

    def start(self, process) -> None:
        client = self.client
        self._process = None
        client.set_process_callback(self._run)
        client.set_xrun_callback(self._on_xrun)
        client.set_shutdown_callback(self._on_shutdown)
        client.activate()
        self.active = True
        # Registered once active, so that a port that can be seen can be connected to.
        self.audio_out = [client.outports.register(f"out_{i}") for i in range(2)]
        self.midi_out = client.midi_outports.register("midi_out")
        self.midi_in = client.midi_inports.register("midi_in")
        self._process = process
        targets = self.audio_targets
        if targets is None:
            targets = [p.name for p in client.get_ports(is_audio=True, is_input=True, is_physical=True)]
        for source, target in zip(self.audio_out, targets):
            client.connect(source, target)
        for target in self.midi_targets:
            client.connect(self.midi_out, target)
        if self.port_name is not None:
            client.connect(self.port_name, self.midi_in)
            self.status.connected = True

    def _run(self, frames: int) -> None:
        process = self._process
        if process is not None:
            process(frames)

    def _on_xrun(self, delayed_usecs: float) -> None:
        self.xruns += 1
        if self.on_xrun is not None:
            self.on_xrun()

    def _on_shutdown(self, status, reason: str) -> None:
        self.shutdown_reason = reason or "the server stopped"

    def poll(self) -> str | None:
        """'lost' when the controller's port went away, 'back' when it (or a port its name matches)
        is there again and connected, else None."""
        if self.input_name is None or not self.active:
            return None
        names = {p.name for p in self.client.get_ports(is_midi=True, is_output=True)}
        if self.status.connected:
            if self.port_name not in names:
                self.status.connected = False
                self.status.lost += 1
                return "lost"
            return None
        try:
            port = self.port_name if self.port_name in names else self.find(self.input_name, True, True, "MIDI input")[0]
            self.client.connect(port, self.midi_in)
        except Exception:
            return None
        self.port_name = port
        self.status.connected = True
        self.status.reconnected += 1
        return "back"

    def close(self) -> None:
        if self.client is None:
            return
        try:
            if self.active:
                self.client.deactivate()
            self.client.close()
        except Exception:
            pass
        self.active = False
        self.client = None


def play(patch: Patch, settings: LiveSettings, out=sys.stderr) -> LiveStats:
    """Open everything, play until stopped, close everything."""
    host = LiveHost(patch, settings, out=out)
    return host.run()
