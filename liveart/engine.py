"""The engine: timestamped events in, audio blocks and musical state out.

Deterministic and clock-free: time is the frame counter alone, so the offline renderer and the
live host drive the very same object. Usage::

    engine = Engine(load_patch())
    engine.schedule(events.note_on(frame=480, channel=0, note=60, velocity=100))
    block = engine.render(128)          # shape (128, 2), float32
    engine.state.onsets                 # notes that began in that block

Timing rules (the same for every block size):

- every event acts on the engine's state at its exact frame: notes and the pedal start and stop
  there, and a note starting at or after a control change plays with it;
- voices already sounding follow continuous controls (pitch bend, volume, pan, expression, mapped
  CCs) from the first control hop boundary at or after the change, ramping over one hop so they
  never click; a pitch change of more than MAX_GLIDE_PER_HOP glides over several hops;
- an event scheduled for a frame already rendered is played at the next frame and counted in
  ``stats.late_events``;
- a channel that plays through the timbre model (``timbre`` in its patch table) gets every voice's
  parameter frame from the model's decoder: at the note-on, then at every control hop boundary,
  batched over the sounding voices, ramping over one hop; its place in the latent space glides
  towards the target its anchor, program changes and controllers set (an exact exponential in
  frames, time constant ``[timbre] smoothing_ms``).

Rendering the same events with any block sizes gives the same samples to float32 precision.
"""

from __future__ import annotations

import heapq
import math
import operator
from dataclasses import dataclass, field

import numpy as np

from . import events as ev
from .patch import CC_PARAMS, Patch
from .synth import kernel
from .synth.bank import FAR_FUTURE, TAPER_END, VoiceBank
from .synth.presets import N_HARMONICS, N_NOISE_BANDS
from .synth.presets import frame_for_note, frames_for_notes, preset_for_program
from .timbre.frames import MAX_OFF_SECONDS

# Timbre-model voices: the model shapes attack, sustain and release; the synth's own envelope only
# opens without a click and closes the voice TIMBRE_RELEASE_SECONDS after the note-off at the latest
# (a released voice ends sooner once the model says it is silent).
TIMBRE_ATTACK_SECONDS = 0.0005
# FluidR3_GM (at the synth gain the data was rendered with) plays about 15 dB under the presets: the
# demo piece measured -29.3 dB RMS at a level of 3 against -23.6 dB with the presets.
TIMBRE_LEVEL = 6.0
TIMBRE_RELEASE_SECONDS = 8.0  # long, so its curve barely colours the model's release (-1.6 dB at 0.3 s)
# A released voice is faded out and freed once the model's level (FluidR3_GM's scale) is under
# TIMBRE_SILENT_DB, or TIMBRE_SILENT_RANGE_DB under the voice's loudest, or its release has run past
# what the model learnt (frames.MAX_OFF_SECONDS).
# Decoding on the spot (offline), a voice's frames for this many control hops ahead are decoded in
# one batched call, as they will be if nothing changes; a release, a new note in the slot or a move
# of the channel's target discards them. Same frames, far fewer calls.
TIMBRE_AHEAD_HOPS = 8
TIMBRE_SILENT_DB = -80.0
TIMBRE_SILENT_RANGE_DB = 60.0

# Extra voice slots beyond the polyphony, for voices fading out after being stolen.
STEAL_SLOTS_RATIO = 1.0
# Internal queue entry: a hop boundary at which a channel's sounding voices follow its controls.
_RAMP = -1
_PITCH, _GAIN, _TIMBRE = 1, 2, 4  # what a ramp must update
# Largest pitch ratio in one control hop: partials stop at TAPER_END (0.45) of the sample rate, so
# within this ratio no partial of either cross-faded wavetable passes Nyquist during a ramp.
MAX_GLIDE_PER_HOP = 0.5 / TAPER_END
DEFAULT_TEMPO_US = 500_000
FRAME_CACHE_SIZE = 4096  # distinct (preset, note, velocity, controls) sounds kept with their wavetables


def note_hz(note: float) -> float:
    return 440.0 * 2.0 ** ((note - 69.0) / 12.0)


@dataclass
class ChannelState:
    preset: str
    follow_program: bool
    volume: float
    pan: float
    brightness: float
    noise: float
    expression: float = 1.0
    bend_semitones: float = 0.0
    sustain: bool = False
    program: int = 0
    attack_scale: float = 1.0
    release_scale: float = 1.0
    timbre: bool = False  # plays through the timbre model


@dataclass
class EngineStats:
    """Health counters; read them, never log from the audio path."""

    events: int = 0
    late_events: int = 0
    stolen_voices: int = 0
    hard_cuts: int = 0  # a voice cut without a fade because every slot was busy
    peak_voices: int = 0
    timbre_frames: int = 0  # voice parameter frames decoded by the timbre model
    timbre_late: int = 0  # voice frames not ready in time: the voice kept its last parameters


@dataclass
class MusicalState:
    """What the engine played in the last block, for the melody model and the visualizer."""

    block_start: int = 0
    block_frames: int = 0
    tempo_us_per_beat: int = DEFAULT_TEMPO_US
    onsets: list = field(default_factory=list)  # (frame, channel, note, velocity) in this block
    peak: float = 0.0  # largest absolute sample of the block
    rms: float = 0.0
    timbre_positions: np.ndarray | None = None  # (16, latent): each channel's place in the timbre space

    @property
    def tempo_bpm(self) -> float:
        return 60e6 / self.tempo_us_per_beat


class Engine:
    def __init__(self, patch: Patch, sample_rate: int | None = None, seed: int = 0,
                 use_kernel: bool | None = None, timbre=None):
        """``use_kernel``: None uses the compiled synth kernel when numba is installed; False forces
        the numpy reference renderer (slower, same sound to float precision).

        ``timbre``: the decoder for channels that play through the timbre model: a
        :class:`~liveart.timbre.model.TimbreModel`, or None to load the patch's (only when a channel
        uses it)."""
        self.patch = patch
        self.sample_rate = int(sample_rate or patch.audio.sample_rate)
        self.hop_frames = patch.audio.control_hop_frames
        self.polyphony = patch.audio.polyphony
        self.master_gain = 10.0 ** (patch.audio.gain_db / 20.0)
        capacity = self.polyphony + max(4, int(self.polyphony * STEAL_SLOTS_RATIO))
        self.bank = VoiceBank(self.sample_rate, capacity, self.hop_frames, seed, use_kernel)
        self.channels = [
            ChannelState(c.preset, c.follow_program, c.volume, c.pan, c.brightness, c.noise, timbre=c.timbre is not None)
            for c in patch.channels
        ]
        self._slot_preset = [""] * capacity
        self._frame_cache: dict[tuple, tuple] = {}
        self._table_cache: dict[tuple, np.ndarray] = {}
        self._cc_map = patch.cc_map()
        self._queue: list[tuple[int, int, ev.Event]] = []
        self._seq = 0
        self._ramp_flags: dict[int, int] = {}  # channel → what its pending ramp updates
        self.frame = 0
        self.state = MusicalState()
        self.stats = EngineStats()
        self.timbre = None
        self._timbre_voice = np.zeros(capacity, bool)
        self._timbre_peak = np.zeros(capacity)  # each timbre voice's loudest level so far (model scale)
        self._timbre_async = False  # a worker decodes ahead (live); set by _init_timbre
        if patch.uses_timbre():
            self._init_timbre(timbre)
        self.reserve(patch.audio.block_frames)

    def _init_timbre(self, timbre) -> None:
        from .errors import PatchError
        from .timbre.control import Glide, TimbreControl
        from .timbre.model import TimbreModel

        self.timbre = timbre if timbre is not None else TimbreModel.load(self.patch.timbre.model,
                                                                           self.patch.timbre.device)
        try:
            self.timbre_control = TimbreControl(self.timbre.anchors, self.timbre.latent_low, self.timbre.latent_high,
                                                self.patch.timbre, self.patch.channels)
        except ValueError as e:
            raise PatchError(f"{self.patch.source}: {e}") from None
        self._glide = Glide(self.timbre_control.targets, self.patch.timbre.smoothing_ms * 1e-3 * self.sample_rate)
        self._timbre_async = bool(getattr(self.timbre, "asynchronous", False))
        self._timbre_posted = -1
        self._timbre_applied = -1
        self._place_version = np.zeros(16, np.int64)
        # Frames decoded ahead, per slot: (t_on, released, place version, first boundary, h, noise, amp).
        self._ahead: dict[int, tuple] = {}
        if self._timbre_async:
            from .timbre.worker import Request

            self._timbre_request = Request  # imported once here, not on the audio thread at every hop
            self.timbre.start(self._glide.position, self.timbre_control.enabled)
        self._timbre_gain = TIMBRE_LEVEL * 10.0 ** (self.patch.timbre.gain_db / 20.0)
        self._timbre_release_frames = int(MAX_OFF_SECONDS * self.sample_rate)
        self._last_tick = -1
        self.state.timbre_positions = self._glide.position

    # ------------------------------------------------------------------ input
    def schedule(self, event: ev.Event) -> None:
        """Queue one event. Events may arrive in any order; they are played by frame.

        Raises ValueError for an event no MIDI message could produce (so nothing can hang on a
        note number that a note-off could never name).
        """
        problem = _event_problem(event)
        if problem:
            raise ValueError(f"not an engine event ({problem}): {event!r}")
        frame = int(event.frame)
        if frame < self.frame:
            self.stats.late_events += 1
            frame = self.frame
        heapq.heappush(self._queue, (frame, self._seq, event))
        self._seq += 1

    def schedule_many(self, events) -> None:
        for e in events:
            self.schedule(e)

    def all_notes_off(self, frame: int | None = None) -> None:
        """Release every note on every channel (pedal too) at ``frame`` (default: now)."""
        frame = self.frame if frame is None else frame
        for c in range(16):
            self.schedule(ev.control_change(frame, c, ev.CC_SUSTAIN, 0))
            self.schedule(ev.control_change(frame, c, ev.CC_ALL_NOTES_OFF, 0))

    @property
    def pending_events(self) -> int:
        return len(self._queue)

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
        self._l = np.zeros(max_block_frames)
        self._r = np.zeros(max_block_frames)
        self.bank.reserve(max_block_frames)

    def render_into(self, out: np.ndarray) -> None:
        """Fill ``out`` (shape (frames, 2), float32, C order) with the next ``frames`` frames."""
        if out.dtype != np.float32 or out.ndim != 2 or out.shape[1] != 2 or not out.flags.c_contiguous:
            raise ValueError(f"render_into needs a C-ordered float32 array of shape (frames, 2), "
                             f"not {out.dtype} {out.shape}")
        n = out.shape[0]
        if len(self._l) < n:
            self.reserve(n)
        left, right = self._l[:n], self._r[:n]
        left.fill(0.0)
        right.fill(0.0)
        start = self.frame
        state = self.state
        state.block_start = start
        state.block_frames = n
        if state.onsets:
            state.onsets = []
        t, end = start, start + n
        queue = self._queue
        hop = self.hop_frames
        while t < end:
            if queue and queue[0][0] <= t:
                self._apply_due(t)
            stop = min(queue[0][0], end) if queue else end
            if self.timbre is not None and self._timbre_sounding(t):
                if t % hop == 0 and t != self._last_tick:
                    self._last_tick = t
                    self._timbre_tick(t)
                stop = min(stop, (t // hop + 1) * hop)  # the next control hop boundary
            self.bank.render(t, left[t - start : stop - start], right[t - start : stop - start])
            t = stop
        self.frame = end
        if self.timbre is not None:
            self._glide.advance(end)  # the places move on even while no timbre voice sounds
        if kernel.KERNEL_AVAILABLE:
            peak, energy = kernel.finish_block(left, right, self.master_gain, out)
        else:
            left *= self.master_gain
            right *= self.master_gain
            out[:, 0] = left
            out[:, 1] = right
            peak = max(float(np.max(np.abs(left), initial=0.0)), float(np.max(np.abs(right), initial=0.0)))
            energy = float(np.dot(left, left)) + float(np.dot(right, right))
        state.peak = float(peak)
        state.rms = math.sqrt(energy / (2 * n)) if n else 0.0
        if self._timbre_async:  # only now: a worker woken mid-block would take the GIL from this thread
            self.timbre.wake()

    # ------------------------------------------------------------------ event handling
    def _apply_due(self, t: int) -> None:
        queue = self._queue
        while queue and queue[0][0] <= t:
            _, _, e = heapq.heappop(queue)
            kind = e.kind
            if kind == _RAMP:  # a hop boundary after control changes: sounding voices follow
                flags, self._ramp_flags = self._ramp_flags, {}
                self._update_voices(t, flags)
                continue
            self.stats.events += 1
            if kind == ev.NOTE_ON:
                self._note_on(t, e.channel, e.a, e.b)
            elif kind == ev.NOTE_OFF:
                self._note_off(t, e.channel, e.a)
            elif kind == ev.CONTROL_CHANGE:
                self._control(t, e.channel, e.a, e.b)
            elif kind == ev.PITCH_BEND:
                self.channels[e.channel].bend_semitones = e.a / 8192.0 * self.patch.audio.pitch_bend_range
                self._request_ramp(t, e.channel, _PITCH)
            elif kind == ev.PROGRAM_CHANGE:
                ch = self.channels[e.channel]
                ch.program = e.a
                if ch.timbre:
                    self._glide.advance(t)
                    if self.timbre_control.program_change(e.channel, e.a):
                        self._timbre_place_moved(t, e.channel)
                elif ch.follow_program:
                    ch.preset = preset_for_program(ch.program)
            elif kind == ev.TEMPO:
                self.state.tempo_us_per_beat = e.a

    def _request_ramp(self, t: int, channel: int, flags: int) -> None:
        """Controls act on the channel at once (a note starting now uses them); voices already
        sounding ramp to them from the next control hop boundary, over one hop, all channels
        together."""
        if not self._ramp_flags:
            boundary = -(-t // self.hop_frames) * self.hop_frames
            heapq.heappush(self._queue, (boundary, self._seq, ev.Event(boundary, _RAMP, 0)))
            self._seq += 1
        self._ramp_flags[channel] = self._ramp_flags.get(channel, 0) | flags

    def _channel_gains(self, ch: ChannelState) -> tuple[float, float]:
        gain = (ch.volume * ch.volume) * (ch.expression * ch.expression)
        angle = (ch.pan + 1.0) * (math.pi / 4.0)
        return gain * math.cos(angle), gain * math.sin(angle)

    def _voices_of(self, t: int, channel: int) -> np.ndarray:
        b = self.bank
        return np.flatnonzero((b.t_end > t) & (b.channel == channel))

    def _note_on(self, t: int, channel: int, note: int, velocity: int) -> None:
        if velocity <= 0:
            self._note_off(t, channel, note)
            return
        b = self.bank
        ch = self.channels[channel]
        # The same key again on the same channel: the old voice releases (no stacked hanging copies).
        same = np.flatnonzero((b.t_end > t) & (b.channel == channel) & (b.note == note) & (b.t_off >= FAR_FUTURE))
        if len(same):
            b.release_voices(same, t)
        sounding = np.flatnonzero((b.t_end > t) & (b.t_kill >= FAR_FUTURE))
        if len(sounding) >= self.polyphony:
            self._steal(t, sounding)
        free = np.flatnonzero(b.t_end <= t)
        if len(free):
            slot = int(free[np.argmin(b.t_end[free])])
        else:  # every slot busy, even the fading ones: cut the one nearest its end
            slot = int(np.argmin(b.t_end))
            self.stats.hard_cuts += 1
        f0 = note_hz(note)
        freq = f0 * 2.0 ** (ch.bend_semitones / 12.0) / self.sample_rate
        if ch.timbre:
            self._timbre_note_on(t, slot, channel, note, velocity, f0, freq, ch)
            return
        preset = self.patch.presets[ch.preset]
        harmonics, noise, amp = self._timbre(ch.preset, note, velocity, ch)
        # Pieces repeat notes: a wavetable is built once per distinct sound and pitch.
        table = _cached(self._table_cache, (ch.preset, note, velocity, ch.brightness, ch.noise, ch.bend_semitones),
                        lambda: b.build_tables(harmonics[None, :], np.array([freq]))[0])
        gain_l, gain_r = self._channel_gains(ch)
        sr = self.sample_rate
        b.start_voice(
            slot, t, channel, note, velocity, f0, freq, harmonics, noise, amp, gain_l, gain_r, table,
            attack_frames=max(1, round(preset.attack_seconds * ch.attack_scale * sr)),
            decay_frames=max(1, round(preset.decay_seconds * sr)),
            sustain_level=preset.sustain_level,
            release_frames=max(1, round(preset.release_seconds * ch.release_scale * sr)),
        )
        self._slot_preset[slot] = ch.preset
        self._timbre_voice[slot] = False
        self._started(t, channel, note, velocity)

    def _started(self, t: int, channel: int, note: int, velocity: int) -> None:
        b = self.bank
        self.state.onsets.append((t, channel, note, velocity))
        self.stats.peak_voices = max(self.stats.peak_voices,
                                     int(np.count_nonzero((b.t_end > t) & (b.t_kill >= FAR_FUTURE))))

    def _steal(self, t: int, sounding: np.ndarray) -> None:
        b = self.bank
        released = sounding[b.t_off[sounding] < FAR_FUTURE]
        if len(released):
            victim = released[np.argmin(b.adsr_level(released, t))]
        else:
            victim = sounding[np.argmin(b.t_on[sounding])]
        b.kill_voices(np.array([victim]), t)
        self.stats.stolen_voices += 1

    def _note_off(self, t: int, channel: int, note: int) -> None:
        b = self.bank
        held = np.flatnonzero((b.t_end > t) & (b.channel == channel) & (b.note == note)
                              & (b.t_off >= FAR_FUTURE) & ~b.pedal_held)
        if len(held) == 0:
            return
        slot = held[np.argmin(b.t_on[held])]
        if self.channels[channel].sustain:
            b.pedal_held[slot] = True
        else:
            b.release_voices(np.array([slot]), t)

    def _control(self, t: int, channel: int, control: int, value: int) -> None:
        ch = self.channels[channel]
        b = self.bank
        if control == ev.CC_SUSTAIN:
            down = value >= 64
            if ch.sustain and not down:
                self._release_pedal(t, channel)
            ch.sustain = down
        elif control == ev.CC_ALL_NOTES_OFF:
            b.release_voices(self._voices_of(t, channel), t)
        elif control == ev.CC_ALL_SOUND_OFF:
            b.kill_voices(self._voices_of(t, channel), t)
        elif control == ev.CC_RESET_CONTROLLERS:
            if ch.sustain:
                self._release_pedal(t, channel)
            ch.sustain = False
            ch.expression = 1.0
            ch.bend_semitones = 0.0
            self._request_ramp(t, channel, _PITCH | _GAIN)
        if ch.timbre:
            self._glide.advance(t)
            moved = (self.timbre_control.reset(channel) if control == ev.CC_RESET_CONTROLLERS
                     else self.timbre_control.control_change(channel, control, value))
            if moved:
                self._timbre_place_moved(t, channel)
        for mapping in self._cc_map.get(control, ()):
            if mapping.channel is not None and mapping.channel != channel or mapping.param not in CC_PARAMS:
                continue  # another channel's, or a melody parameter (the host's, not the engine's)
            low, high = CC_PARAMS[mapping.param]
            v = min(max(mapping.value(value), low), high)
            if mapping.param == "attack":
                ch.attack_scale = v
            elif mapping.param == "release":
                ch.release_scale = v
            else:
                setattr(ch, mapping.param, v)
                self._request_ramp(t, channel, _TIMBRE if mapping.param in ("brightness", "noise") else _GAIN)

    def _release_pedal(self, t: int, channel: int) -> None:
        voices = self._voices_of(t, channel)
        self.bank.release_voices(voices[self.bank.pedal_held[voices]], t)

    def _timbre(self, preset_name: str, note: int, velocity: int, ch: ChannelState):
        """(harmonics, noise, amp) of a note under the channel's controls; cached per distinct sound."""
        return _cached(self._frame_cache, (preset_name, note, velocity, ch.brightness, ch.noise),
                       lambda: frame_for_note(self.patch.presets[preset_name], note_hz(note), velocity,
                                              ch.brightness, ch.noise, self.sample_rate))

    def _update_voices(self, t: int, flags_by_channel: dict[int, int]) -> None:
        """Ramp the sounding voices of the given channels to their channels' controls from ``t``,
        in one vectorised pass; ``flags_by_channel`` says what changed on each channel."""
        b = self.bank
        flags = np.zeros(16, np.int64)
        for c, f in flags_by_channel.items():
            flags[c] = f
        voices = np.flatnonzero((b.t_end > t) & (flags[b.channel] != 0))
        if len(voices) == 0:
            return
        channel = b.channel[voices]
        chans = self.channels
        bend = np.array([ch.bend_semitones for ch in chans])[channel]
        freq = b.f0_hz[voices] * 2.0 ** (bend / 12.0) / self.sample_rate
        # A voice's pitch moves at most MAX_GLIDE_PER_HOP in one hop: within that, neither of the
        # two wavetables being cross-faded carries a partial past Nyquist. A larger jump glides
        # over several hops (an octave in 7 hops, 19 ms at 48 kHz).
        now = b.freq_before[voices] + (b.freq_after[voices] - b.freq_before[voices]) * b.ramp_weight_at(voices, t)
        limited = np.clip(freq, now / MAX_GLIDE_PER_HOP, now * MAX_GLIDE_PER_HOP)
        for c in np.unique(channel[limited != freq]):
            self._request_ramp(t + 1, int(c), _PITCH)  # the rest of the way from the next boundary
        freq = limited
        gains = np.array([self._channel_gains(ch) for ch in chans])[channel]
        voice_flags = flags[channel]
        tables = b.table_after[voices]
        noise = b.noise_after[voices]
        timbre = np.flatnonzero((voice_flags & _TIMBRE) & ~self._timbre_voice[voices])
        if len(timbre):
            brightness = np.array([ch.brightness for ch in chans])
            amount = np.array([ch.noise for ch in chans])
            presets = [self._slot_preset[s] for s in voices[timbre]]
            for name in set(presets):  # one vectorised call per preset (usually one)
                rows = timbre[[p == name for p in presets]]
                slots = voices[rows]
                b.harmonics[slots], noise[rows], _ = frames_for_notes(
                    self.patch.presets[name], b.f0_hz[slots], b.velocity[slots], brightness[channel[rows]],
                    amount[channel[rows]], self.sample_rate)
            tables[timbre] = b.build_tables(b.harmonics[voices[timbre]], freq[timbre])
        pitch_only = np.flatnonzero(((voice_flags & _PITCH) != 0) & ((voice_flags & _TIMBRE) == 0))
        if len(pitch_only):
            tables[pitch_only] = b.retune_tables(voices[pitch_only], freq[pitch_only])
        b.begin_ramp(voices, t, freq, gains[:, 0], gains[:, 1], tables, noise)


    # ------------------------------------------------------------------ the timbre model
    def _timbre_place_moved(self, t: int, channel: int) -> None:
        """A channel's target moved at ``t``: with nothing of it sounding, it jumps there (silently);
        otherwise its voices glide. The worker remakes its onset table."""
        b = self.bank
        self._place_version[channel] += 1  # frames decoded ahead for its voices are stale now
        if not np.any(self._timbre_voice & (b.t_end > t) & (b.channel == channel)):
            self._glide.snap(channel)
        if self._timbre_async:
            self.timbre.places_moved(self._glide.predict(t + self.hop_frames))

    def _timbre_sounding(self, t: int) -> bool:
        return bool(np.any(self._timbre_voice & (self.bank.t_end > t)))

    def _timbre_frames(self, t: int, voices: np.ndarray):
        """Decode the parameter frames of ``voices`` at frame ``t``, one batched call."""
        b = self.bank
        sr = self.sample_rate
        z = self._glide.advance(t)[b.channel[voices]]
        on = (t - b.t_on[voices]) / sr
        off = np.where(b.t_off[voices] < FAR_FUTURE, (t - b.t_off[voices]) / sr, -1.0)
        self.stats.timbre_frames += len(voices)
        return self.timbre.frames(z, b.note[voices], b.velocity[voices], on, off, sr, self._timbre_gain)

    def _timbre_frames_ahead(self, t: int, voices: np.ndarray):
        """The frames of ``voices`` at boundary ``t`` (decoding on the spot): from frames decoded
        ahead where still valid, the rest decoded now for TIMBRE_AHEAD_HOPS boundaries in one call."""
        b = self.bank
        hop = self.hop_frames
        k_ahead = TIMBRE_AHEAD_HOPS
        n = len(voices)
        harmonics = np.empty((n, N_HARMONICS), np.float32)
        noise = np.empty((n, N_NOISE_BANDS), np.float32)
        amp = np.empty(n, np.float32)
        released = b.t_off[voices] < FAR_FUTURE
        versions = self._place_version[b.channel[voices]]
        missing = []
        for i, slot in enumerate(voices.tolist()):
            entry = self._ahead.get(slot)
            if entry is not None:
                t_on, was_released, version, first, h, nz, a = entry
                k = (t - first) // hop
                if (t_on == b.t_on[slot] and was_released == released[i] and version == versions[i]
                        and 0 <= k < len(a)):
                    harmonics[i], noise[i], amp[i] = h[k], nz[k], a[k]
                    continue
            missing.append(i)
        if missing:
            rows = np.asarray(missing)
            slots = voices[rows]
            boundaries = t + hop * np.arange(k_ahead)
            sr = self.sample_rate
            self._glide.advance(t)
            z = np.stack([self._glide.predict(int(f)) for f in boundaries])  # (K, 16, latent)
            z = z[:, b.channel[slots]].transpose(1, 0, 2).reshape(-1, z.shape[-1])
            on = ((boundaries[None, :] - b.t_on[slots, None]) / sr).reshape(-1)
            t_off = b.t_off[slots, None]
            off = np.where(t_off < FAR_FUTURE, (boundaries[None, :] - t_off) / sr, -1.0).reshape(-1)
            h, nz, a = self.timbre.frames(z, np.repeat(b.note[slots], k_ahead), np.repeat(b.velocity[slots], k_ahead),
                                          on, off, sr, self._timbre_gain)
            h = h.reshape(len(slots), k_ahead, -1)
            nz = nz.reshape(len(slots), k_ahead, -1)
            a = a.reshape(len(slots), k_ahead)
            self.stats.timbre_frames += len(slots) * k_ahead
            for j, (i, slot) in enumerate(zip(rows.tolist(), slots.tolist())):
                self._ahead[slot] = (int(b.t_on[slot]), bool(released[i]), int(versions[i]), t, h[j], nz[j], a[j])
                harmonics[i], noise[i], amp[i] = h[j, 0], nz[j, 0], a[j, 0]
        return harmonics, noise, amp

    def _timbre_note_on(self, t: int, slot: int, channel: int, note: int, velocity: int, f0: float, freq: float,
                        ch: ChannelState) -> None:
        b = self.bank
        b.t_on[slot] = t  # the decoder reads note time from the slot
        b.t_off[slot] = FAR_FUTURE
        b.channel[slot], b.note[slot], b.velocity[slot] = channel, note, velocity
        if self._timbre_async:  # the audio thread never decodes: the worker's onset table
            h, nz, a = self.timbre.onset(channel, note, velocity)
            harmonics, noise, amp = h[None, :], nz[None, :], np.array([a * self._timbre_gain])
        else:
            harmonics, noise, amp = self._timbre_frames(t, np.array([slot]))
        gain_l, gain_r = self._channel_gains(ch)
        sr = self.sample_rate
        b.start_voice(slot, t, channel, note, velocity, f0, freq, harmonics[0], noise[0].astype(np.float32),
                      float(amp[0]), gain_l, gain_r, None,
                      attack_frames=max(1, round(TIMBRE_ATTACK_SECONDS * sr)), decay_frames=1, sustain_level=1.0,
                      release_frames=max(1, round(TIMBRE_RELEASE_SECONDS * sr)))
        self._slot_preset[slot] = ""
        self._timbre_voice[slot] = True
        self._timbre_peak[slot] = amp[0] / self._timbre_gain
        self._started(t, channel, note, velocity)

    def _timbre_tick(self, t: int) -> None:
        """At a control hop boundary: new frames for every sounding timbre voice (not those that began
        here), ramping over the next hop; released voices the model has made silent are freed."""
        b = self.bank
        tables = None
        if self._timbre_async:
            voices, harmonics, noise, amp, tables = self._timbre_take(t)
            self._timbre_post(t + self.hop_frames)
            if self._glide.moving():  # onset tables follow the glide (the worker rate-limits remakes)
                self.timbre.places_moved(self._glide.predict(t + self.hop_frames))
        else:
            voices = np.flatnonzero(self._timbre_voice & (b.t_end > t) & (b.t_on < t))
            if len(voices):
                harmonics, noise, amp = self._timbre_frames_ahead(t, voices)
        if len(voices) == 0:
            return
        b.harmonics[voices] = harmonics
        freq = b.freq_after[voices]
        if tables is None:
            tables = b.build_tables(harmonics, freq)
        b.begin_ramp(voices, t, freq, b.gain_l_after[voices], b.gain_r_after[voices], tables, noise, amp)
        level = amp / self._timbre_gain
        peak = self._timbre_peak[voices] = np.maximum(self._timbre_peak[voices], level)
        released = b.t_off[voices] < FAR_FUTURE
        over = (t - b.t_off[voices]) >= self._timbre_release_frames
        quiet = (level < 10.0 ** (TIMBRE_SILENT_DB / 20.0)) | (level < peak * 10.0 ** (-TIMBRE_SILENT_RANGE_DB / 20.0))
        silent = voices[released & (quiet | over)]
        if len(silent):
            b.kill_voices(silent, t + self.hop_frames)  # after the ramp down to silence

    def _timbre_take(self, t: int):
        """The worker's frames for boundary ``t`` (or, when late, the newest older ones not yet used):
        (voices, harmonics, noise, amp) of the voices still playing that it decoded; voices it has
        not reached keep their parameters."""
        b = self.bank
        expected = np.flatnonzero(self._timbre_voice & (b.t_end > t) & (b.t_on < t))
        result = self.timbre.latest()
        none = np.zeros(0, np.int64)
        fresh = result is not None and result.boundary == t
        if not fresh and self._timbre_posted == t:  # asked for and not ready
            self.stats.timbre_late += len(expected)
        if result is None or result.boundary <= self._timbre_applied or result.boundary > t:
            return none, None, None, None, None  # nothing newer: the voices keep their parameters
        self._timbre_applied = result.boundary
        # A row counts only if its slot still plays the voice it was decoded for.
        same = (b.t_on[result.slots] == result.t_on) & self._timbre_voice[result.slots] & (b.t_end[result.slots] > t)
        rows = np.flatnonzero(same)
        self.stats.timbre_frames += len(rows)
        return (result.slots[rows], result.harmonics[rows], result.noise[rows], result.amp[rows] * self._timbre_gain,
                result.tables[rows])

    def _timbre_post(self, boundary: int) -> None:
        """Ask the worker for the frames of every sounding timbre voice at ``boundary``, as they will
        be if nothing changes meanwhile (a release in between is heard from the boundary after)."""
        b = self.bank
        voices = np.flatnonzero(self._timbre_voice & (b.t_end > boundary - self.hop_frames))
        if len(voices) == 0:
            return
        sr = self.sample_rate
        z = self._glide.predict(boundary)[b.channel[voices]]
        on = (boundary - b.t_on[voices]) / sr
        off = np.where(b.t_off[voices] < FAR_FUTURE, (boundary - b.t_off[voices]) / sr, -1.0)
        self.timbre.post(self._timbre_request(boundary, voices, b.t_on[voices].copy(), z.astype(np.float32), b.note[voices],
                                 b.velocity[voices], on, off, b.freq_after[voices].copy()))
        self._timbre_posted = boundary


def _cached(cache: dict, key, make):
    """cache[key], made on a miss; the cache is emptied when it reaches FRAME_CACHE_SIZE entries."""
    value = cache.get(key)
    if value is None:
        if len(cache) >= FRAME_CACHE_SIZE:
            cache.clear()
        value = cache[key] = make()
    return value


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
