"""The engine: timestamped events in, audio blocks and musical state out.

Deterministic and clock-free: time is the frame counter alone, so the offline renderer and the
live host drive the very same object. Usage::

    engine = Engine(load_patch())
    engine.schedule(events.note_on(frame=480, channel=0, note=60, velocity=100))
    block = engine.render(128)          # shape (128, 2), float32
    engine.state.onsets                 # notes that began in that block

The work of a block is one compiled call (:func:`liveart.realtime.block.block`) over preallocated
arrays that this class lays out from the patch: the live host's audio callback calls the same code
without the GIL, and this class is its Python face (scheduling, the musical state, the counters).

Timing rules (the same for every block size):

- every event acts on the engine's state at its exact frame: notes and the pedal start and stop
  there, and a note starting at or after a control change plays with it;
- voices already sounding follow continuous controls (pitch bend, volume, pan, expression, mapped
  CCs) from the first control hop boundary at or after the change, ramping over one hop so they
  never click; a pitch change of more than MAX_GLIDE_PER_HOP glides over several hops;
- an event scheduled for a frame already rendered is played at the next frame and counted in
  ``stats.late_events``;
- a channel that plays through the timbre model (``timbre`` in its patch table) gets every voice's
  parameter frame from the model's decoder: at the note-on from the worker's onset table at the
  channel's place, then at every control hop boundary, batched over the sounding voices, ramping
  over one hop; its place in the latent space glides towards the target its anchor, program changes
  and controllers set (an exact exponential in frames, time constant ``[timbre] smoothing_ms``).

Rendering the same events with any block sizes gives the same samples, bit for bit.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from . import events as ev
from .patch import CC_PARAMS, Patch
from .realtime import block as blk
from .synth.bank import VoiceBank, _BASIS
from .synth.presets import BUILTIN_PRESETS, GM_FAMILY_PRESETS, noise_band_centres_hz
from .synth.voices import FAR_FUTURE, preset_arrays
from .timbre.frames import MAX_OFF_SECONDS

# Timbre-model voices: the model shapes attack, sustain and release; the synth's own envelope only
# opens without a click and closes the voice TIMBRE_RELEASE_SECONDS after the note-off at the latest
# (a released voice ends sooner once the model says it is silent, or once its release has run past
# what the model learnt: frames.MAX_OFF_SECONDS).
TIMBRE_ATTACK_SECONDS = 0.0005
# FluidR3_GM (at the synth gain the data was rendered with) plays about 15 dB under the presets: the
# demo piece measured -29.3 dB RMS at a level of 3 against -23.6 dB with the presets.
TIMBRE_LEVEL = 6.0
TIMBRE_RELEASE_SECONDS = 8.0  # long, so its curve barely colours the model's release (-1.6 dB at 0.3 s)
# While a channel's place glides, its onset table follows at most this often (engine time).
PLACES_REFRESH_SECONDS = 0.02
# Extra voice slots beyond the polyphony, for voices fading out after being stolen.
STEAL_SLOTS_RATIO = 1.0
QUEUE_CAPACITY = 4096  # events waiting; scheduling beyond it grows the queue (never from the audio thread)
MAX_ONSETS = 1024  # onsets reported per block
DEFAULT_TEMPO_US = 500_000
MAX_GLIDE_PER_HOP = blk.MAX_GLIDE_PER_HOP


class EngineStats:
    """Health counters, read from the block's own (never log from the audio path)."""

    _FIELDS = {"events": blk.S_EVENTS, "late_events": blk.S_LATE, "stolen_voices": blk.S_STOLEN,
               "hard_cuts": blk.S_HARD_CUTS, "peak_voices": blk.S_PEAK_VOICES, "timbre_frames": blk.S_TIMBRE_FRAMES,
               "timbre_late": blk.S_TIMBRE_LATE, "queue_full": blk.S_QUEUE_FULL,
               "timbre_requests_lost": blk.S_REQUESTS_LOST}

    def __init__(self, st: np.ndarray):
        self._st = st

    def __getattr__(self, name):
        index = EngineStats._FIELDS.get(name)
        if index is None:
            raise AttributeError(name)
        return int(self._st[index])

    def as_dict(self) -> dict:
        return {name: int(self._st[i]) for name, i in EngineStats._FIELDS.items()}


@dataclass
class MusicalState:
    """What the engine played in the last block, for the melody model and the visualizer."""

    block_start: int = 0
    block_frames: int = 0
    tempo_us_per_beat: int = DEFAULT_TEMPO_US
    onsets: list = None  # (frame, channel, note, velocity) in this block
    peak: float = 0.0  # largest absolute sample of the block
    rms: float = 0.0
    timbre_positions: np.ndarray | None = None  # (16, latent): each channel's place in the timbre space

    @property
    def tempo_bpm(self) -> float:
        return 60e6 / self.tempo_us_per_beat


class Engine:
    def __init__(self, patch: Patch, sample_rate: int | None = None, seed: int = 0, timbre=None):
        """``timbre``: the decoder for channels that play through the timbre model: a
        :class:`~liveart.timbre.model.TimbreModel` (served here, on the spot: offline), a
        :class:`~liveart.timbre.worker.TimbreWorker` (served on its own thread: live), or None to
        load the patch's (only when a channel uses it)."""
        self.patch = patch
        self.sample_rate = int(sample_rate or patch.audio.sample_rate)
        sr = self.sample_rate
        self.hop_frames = patch.audio.control_hop_frames
        self.polyphony = patch.audio.polyphony
        capacity = self.polyphony + max(4, int(self.polyphony * STEAL_SLOTS_RATIO))
        self.bank = VoiceBank(sr, capacity, self.hop_frames, seed)
        self.preset_names = list(patch.presets) + [n for n in BUILTIN_PRESETS if n not in patch.presets]
        presets = [patch.presets.get(n) or BUILTIN_PRESETS[n] for n in self.preset_names]
        index = {name: i for i, name in enumerate(self.preset_names)}
        fields, harmonics = preset_arrays(presets)
        cc = [(m.control, -1 if m.channel is None else m.channel, blk.PARAM_NAMES.index(m.param), m.low, m.high,
               *CC_PARAMS[m.param]) for m in patch.cc if m.param in CC_PARAMS]
        channels = patch.channels
        self.ch = blk.Channels(
            preset=np.array([index[c.preset] for c in channels], np.int64),
            follow_program=np.array([c.follow_program for c in channels], np.bool_),
            timbre=np.array([c.timbre is not None for c in channels], np.bool_),
            sustain=np.zeros(16, np.bool_), program=np.zeros(16, np.int64),
            volume=np.array([c.volume for c in channels], np.float64), pan=np.array([c.pan for c in channels], np.float64),
            brightness=np.array([c.brightness for c in channels], np.float64),
            noise=np.array([c.noise for c in channels], np.float64), expression=np.ones(16), bend=np.zeros(16),
            attack_scale=np.ones(16), release_scale=np.ones(16))
        self.timbre = None
        self._service = None
        self._worker = None
        layout = self._timbre_layout(timbre) if patch.uses_timbre() else None
        latent = self.timbre.latent if layout is not None else 0
        from .timbre.worker import VELOCITY_LAYERS, TimbrePools

        self._pools = pools = TimbrePools(latent, capacity if layout is not None else 1)
        self.cfg = blk.Config(
            sample_rate=sr, hop_frames=self.hop_frames, polyphony=self.polyphony,
            master_gain=10.0 ** (patch.audio.gain_db / 20.0), bend_range=float(patch.audio.pitch_bend_range),
            steal_fade_frames=self.bank.steal_fade_frames, presets=fields, preset_harmonics=harmonics,
            family_preset=np.array([index[n] for n in GM_FAMILY_PRESETS], np.int64),
            cc=np.array(cc, np.float64).reshape(-1, 7), basis=_BASIS, centres=np.array(noise_band_centres_hz(sr)),
            timbre_gain=TIMBRE_LEVEL * 10.0 ** (patch.timbre.gain_db / 20.0),
            timbre_attack_frames=max(1, round(TIMBRE_ATTACK_SECONDS * sr)),
            timbre_release_frames=max(1, round(TIMBRE_RELEASE_SECONDS * sr)),
            timbre_free_frames=int(MAX_OFF_SECONDS * sr),
            glide_tau=float(patch.timbre.smoothing_ms * 1e-3 * sr),
            points=layout.points if layout else np.zeros((128, 0)),
            place=layout.place if layout else np.zeros((16, 6), np.int64),
            place_default=layout.place_default if layout else np.zeros((16, 2)),
            dims=layout.dims if layout else np.zeros((0, 4)),
            velocity_layers=VELOCITY_LAYERS.astype(np.int64),
            places_refresh_frames=int(PLACES_REFRESH_SECONDS * sr))
        base = layout.base if layout else np.zeros((16, 0))
        self.tb = blk.Timbre(
            base=base, morph_value=layout.morph_value if layout else np.zeros(16),
            xy_value=layout.xy_value if layout else np.zeros((16, 2)), offsets=np.zeros_like(base),
            targets=np.zeros_like(base), position=np.zeros_like(base), before=np.zeros_like(base),
            req_seq=pools.req_seq, req_rows=pools.req_rows, req_meta=pools.req_meta, req_places=pools.req_places,
            res_h=pools.res_h, res_noise=pools.res_noise, res_amp=pools.res_amp, res_tables=pools.res_tables,
            res_ids=pools.res_ids, res_meta=pools.res_meta, res_free_header=pools.res_free.header,
            res_free=pools.res_free.data, res_ready_header=pools.res_ready.header, res_ready=pools.res_ready.data,
            on_h=pools.on_h, on_noise=pools.on_noise, on_amp=pools.on_amp, on_free_header=pools.on_free.header,
            on_free=pools.on_free.data, on_ready_header=pools.on_ready.header, on_ready=pools.on_ready.data,
            pool_row=np.zeros(1, np.int64))
        st = np.zeros(blk.S_SIZE, np.int64)
        st[blk.S_TEMPO] = DEFAULT_TEMPO_US
        st[blk.S_LAST_TICK] = -1
        st[blk.S_POSTED] = st[blk.S_APPLIED] = -1
        st[blk.S_RESULT] = -1
        st[blk.S_PLACES_POSTED] = -(1 << 40)
        self.s = blk.State(
            queue=np.zeros((QUEUE_CAPACITY, blk.Q_WIDTH), np.int64), st=st, sf=np.zeros(blk.F_SIZE),
            onsets=np.zeros((MAX_ONSETS, 4), np.int64), ramp_flags=np.zeros(16, np.int64),
            flags_now=np.zeros(16, np.int64), act=np.zeros(capacity, np.int64), left=np.zeros(1), right=np.zeros(1),
            env=np.zeros(1), noise_now=np.zeros(1, np.float32), noise_then=np.zeros(1, np.float32),
            row=np.zeros(blk.Q_WIDTH, np.int64))
        self.stats = EngineStats(st)
        self.state = MusicalState(onsets=[], timbre_positions=self.tb.position if layout else None)
        self.reserve(patch.audio.block_frames)
        if layout is not None:
            for c in range(16):
                blk._update_place(self.cfg, self.tb, c)
            self.tb.position[:] = self.tb.targets
            self._start_timbre(timbre)

    # ------------------------------------------------------------------ set-up
    def _timbre_layout(self, timbre):
        from .errors import PatchError
        from .timbre.control import timbre_layout
        from .timbre.model import TimbreModel

        self.timbre = timbre if timbre is not None else TimbreModel.load(self.patch.timbre.model,
                                                                           self.patch.timbre.device)
        try:
            return timbre_layout(self.timbre.anchors, self.timbre.latent_low, self.timbre.latent_high,
                                 self.patch.timbre, self.patch.channels)
        except ValueError as e:
            raise PatchError(f"{self.patch.source}: {e}") from None

    def _start_timbre(self, timbre) -> None:
        from .timbre.worker import TimbreService

        asynchronous = bool(getattr(self.timbre, "asynchronous", False))
        model = self.timbre.model if asynchronous else self.timbre
        self._service = TimbreService(model, self._pools, self.sample_rate, self.ch.timbre)
        self._service.make_first_tables(self.tb.position)
        if asynchronous:
            self._worker = self.timbre
            self._worker.start(self._service)

    @property
    def timbre_targets(self) -> np.ndarray:
        """(16, latent): where each timbre channel's place is heading."""
        return self.tb.targets

    @property
    def channels(self) -> list[SimpleNamespace]:
        """Each channel's controls now (a copy)."""
        c = self.ch
        return [SimpleNamespace(preset=self.preset_names[c.preset[i]], timbre=bool(c.timbre[i]),
                                follow_program=bool(c.follow_program[i]), sustain=bool(c.sustain[i]),
                                program=int(c.program[i]), volume=float(c.volume[i]), pan=float(c.pan[i]),
                                brightness=float(c.brightness[i]), noise=float(c.noise[i]),
                                expression=float(c.expression[i]), bend_semitones=float(c.bend[i]))
                for i in range(16)]

    # ------------------------------------------------------------------ input
    @property
    def frame(self) -> int:
        return int(self.s.st[blk.S_FRAME])

    def schedule(self, event: ev.Event) -> None:
        """Queue one event. Events may arrive in any order; they are played by frame.

        Raises ValueError for an event no MIDI message could produce (so nothing can hang on a
        note number that a note-off could never name).
        """
        problem = _event_problem(event)
        if problem:
            raise ValueError(f"not an engine event ({problem}): {event!r}")
        if self.s.st[blk.S_QUEUE] >= self.s.queue.shape[0]:
            self._grow_queue()
        blk.schedule(self.s, int(event.frame), int(event.kind), int(event.channel), int(event.a), int(event.b))

    def schedule_many(self, events) -> None:
        for e in events:
            self.schedule(e)

    def _grow_queue(self) -> None:
        queue = np.zeros((2 * self.s.queue.shape[0], blk.Q_WIDTH), np.int64)
        queue[: len(self.s.queue)] = self.s.queue
        self.s = self.s._replace(queue=queue)

    def all_notes_off(self, frame: int | None = None) -> None:
        """Release every note on every channel (pedal too) at ``frame`` (default: now)."""
        frame = self.frame if frame is None else frame
        for c in range(16):
            self.schedule(ev.control_change(frame, c, ev.CC_SUSTAIN, 0))
            self.schedule(ev.control_change(frame, c, ev.CC_ALL_NOTES_OFF, 0))

    @property
    def pending_events(self) -> int:
        return int(self.s.st[blk.S_QUEUE])

    def sounding_voices(self) -> int:
        return int(np.count_nonzero(self.bank.t_end > self.frame))

    def sounding_notes(self) -> list[tuple[int, int, int]]:
        """(channel, note, velocity) of every voice held (not yet released) now."""
        b = self.bank
        held = np.flatnonzero((b.t_end > self.frame) & (b.t_off >= FAR_FUTURE) & (b.t_kill >= FAR_FUTURE))
        return [(int(b.channel[s]), int(b.note[s]), int(b.velocity[s])) for s in held]

    # ------------------------------------------------------------------ output
    def render(self, frames: int) -> np.ndarray:
        out = np.empty((frames, 2), np.float32)
        self.render_into(out)
        return out

    def reserve(self, max_block_frames: int) -> None:
        """Allocate the mix and synth buffers for blocks up to ``max_block_frames`` now, so a block
        of that size allocates no audio buffer."""
        n = max(1, max_block_frames)
        if len(self.s.left) < n:
            self.s = self.s._replace(left=np.zeros(n), right=np.zeros(n), env=np.zeros(n),
                                     noise_now=np.zeros(n, np.float32), noise_then=np.zeros(n, np.float32))

    def render_into(self, out: np.ndarray) -> None:
        """Fill ``out`` (shape (frames, 2), float32, C order) with the next ``frames`` frames."""
        if out.dtype != np.float32 or out.ndim != 2 or out.shape[1] != 2 or not out.flags.c_contiguous:
            raise ValueError(f"render_into needs a C-ordered float32 array of shape (frames, 2), "
                             f"not {out.dtype} {out.shape}")
        n = out.shape[0]
        self.reserve(n)
        start = self.frame
        if self._worker is not None:
            blk.block(self.cfg, self.bank.voices, self.ch, self.s, self.tb, out)
            self._worker.wake()
        else:
            blk.begin(self.s, n)
            while blk.run(self.cfg, self.bank.voices, self.ch, self.s, self.tb, True) == blk.STOPPED:
                self._service.serve()  # decode what the block asked for before it goes on
            blk.finish(self.cfg, self.s, self.tb, out)
        self._publish(start, n)

    def _publish(self, start: int, n: int) -> None:
        state = self.state
        st = self.s.st
        state.block_start = start
        state.block_frames = n
        k = int(st[blk.S_ONSETS])
        state.onsets = [tuple(int(x) for x in row) for row in self.s.onsets[:k]] if k else []
        state.tempo_us_per_beat = int(st[blk.S_TEMPO])
        state.peak = float(self.s.sf[blk.F_PEAK])
        state.rms = float(self.s.sf[blk.F_RMS])


def _event_problem(e: ev.Event) -> str:
    """What makes ``e`` impossible as a MIDI event, or '' when it is fine."""
    try:
        operator.index(e.frame)
    except TypeError:
        return "frame must be an integer"
    if e.kind not in ev.KIND_NAMES:
        return "unknown kind"
    if not 0 <= e.channel <= 15:
        return "channel must be 0-15"
    if e.kind in (ev.NOTE_ON, ev.NOTE_OFF, ev.CONTROL_CHANGE):
        if not (0 <= e.a <= 127 and 0 <= e.b <= 127):
            return "data bytes must be 0-127"
    elif e.kind == ev.PITCH_BEND:
        if not -8192 <= e.a <= 8191:
            return "bend must be -8192..8191"
    elif e.kind == ev.PROGRAM_CHANGE:
        if not 0 <= e.a <= 127:
            return "program must be 0-127"
    elif e.kind == ev.TEMPO and not 0 < e.a <= 0xFFFFFF:
        return "tempo must be 1..16777215 microseconds per beat"
    return ""
