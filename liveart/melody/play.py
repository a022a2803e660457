"""The ways the melody model plays with a performer, on a step grid, the same offline and live.

A :class:`Partner` is driven one grid step (a 16th note) at a time by a host: the host hands it the
performer's notes as they happen (stamped in steps, fractions allowed: a free phrase need not sit
on the grid), then calls :meth:`Partner.step` for each step, in order, no later than the step's
time. ``step`` returns the notes to start and stop at that step. The partner never reads a clock and
knows nothing of frames or seconds: the host maps steps to its own time (a MIDI file's tempo map,
an internal clock, an external MIDI clock). The same events in the same order give the same notes.

Modes:

- ``answer`` (call and response): after the player's phrase ends and ``silence_seconds`` pass (or at
  the next bar line after that, when a meter is known and ``wait_for_bar`` is set), the phrase
  primes the model and it answers for ``answer_ratio`` × the phrase's length. A new phrase from the
  player cuts the answer short.
- ``continue``: the same, but the model goes on for ``continue_bars`` bars; offline, it starts where
  the prime ends (:meth:`Partner.end_of_input`), with no silence first.
- ``accompany``: the model plays along on the grid while the player plays, each step conditioned on
  the pitch classes the player sounded in the step before; it falls silent a bar after the player.
- ``free``: the model plays on its own at the tempo.

A performer's controls (temperature, density, answer length, mode, key lock, panic) change
settings between steps: :meth:`Partner.configure` and :meth:`Partner.panic`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .. import events as ev
from . import representation as rep
from .model import MelodyModel, Sampler, Voice, advance
from .settings import MODES, PlaySettings, parse_key  # noqa: F401 (where callers find them)

DEFAULT_VELOCITY = 80
ACCENT = 8  # added on bar lines when a meter is known
MAX_GAP_RESTS = 32  # rests fed between exchanges, at most (two 4/4 bars)
# A longer phrase primes the model with its last this-many steps (priming costs one model step per
# step of the phrase, ~0.1 ms each, in the step where the answer is decided).
MAX_PHRASE_STEPS = 256
MAX_PHRASE_NOTES = 512  # the player's notes kept for one phrase; older ones are forgotten
MAX_ANSWER_STEPS = 1024
KEY_MEMORY = 0.97  # the automatic key follows the player: each ended note fades older ones by this


@dataclass
class _PlayerNote:
    start: float
    end: float | None
    pitch: int
    velocity: int


class Partner:
    """One musical partner: a model voice, a sampler and the state of the exchange, all explicit.

    A partner belongs to one thread: a live host queues the player's events as they arrive and hands
    them over (``note_on``/``note_off``) in the thread that calls ``step``, before each step.
    """

    def __init__(self, model: MelodyModel, settings: PlaySettings | None = None, seed: int = 0,
                 meter: rep.Meter | None = None, bar_origin_step: int = 0, step_seconds: float = 0.125):
        self.model = model
        self.settings = settings or PlaySettings()
        self.settings.validate()
        if not step_seconds > 0:
            raise ValueError(f"step_seconds must be positive, not {step_seconds}")
        self.meter = meter
        self.bar_origin_step = bar_origin_step
        self.step_seconds = step_seconds
        self.voice = Voice.new(model)
        self._lock: frozenset[int] | None = self._fixed_lock()
        self.sampler = Sampler(self.settings.sampling(self._lock), seed)
        self.seed = seed
        self.notes: list[_PlayerNote] = []  # the player's notes, oldest first (pruned)
        self.held: dict[int, _PlayerNote] = {}
        self.phrase_start: int | None = None  # index in self.notes of the current phrase's first note
        self.answer_from = -1  # step the current answer starts at
        self.answer_until = -1  # step the current answer ends at (exclusive)
        self.last_step = -1
        self.last_fed_step = -1  # the model has seen every step before this one
        self.sounding: int | None = None  # the partner's own note that sounds now
        self._end_of_input: float | None = None
        self._velocity = DEFAULT_VELOCITY
        self.generated_notes = 0
        self.whole_input_is_prime = False  # offline continuation: continue only where the input ends
        self.stopped = False  # after a panic: free play waits for resume(), the others for the player
        self._key_hist = np.zeros(12)  # the player's pitch classes, weighted by duration in steps
        self._key_hist_changed = False

    # -- input from the host -------------------------------------------------------------------
    def note_on(self, time_steps: float, pitch: int, velocity: int) -> None:
        if pitch in self.held:  # a repeated key: the old note ends here
            self.note_off(time_steps, pitch)
        note = _PlayerNote(float(time_steps), None, int(pitch), int(velocity))
        self.notes.append(note)
        self.held[pitch] = note
        self.stopped = False
        self._key_hist[note.pitch % 12] += 1.0  # counts while held; its length is added when it ends
        self._key_hist_changed = True
        if self.settings.mode in ("answer", "continue"):
            if self.phrase_start is None:
                self.phrase_start = len(self.notes) - 1
            elif len(self.notes) - self.phrase_start > MAX_PHRASE_NOTES:
                self.phrase_start += 1  # a phrase that never ends: only its recent part matters
        if self.answer_until > time_steps and self.settings.mode in ("answer", "continue"):
            self.answer_until = int(np.ceil(time_steps))  # the player cuts in: the answer stops

    def note_off(self, time_steps: float, pitch: int) -> None:
        note = self.held.pop(int(pitch), None)
        if note is not None:
            note.end = max(float(time_steps), note.start)
            self._key_hist *= KEY_MEMORY
            self._key_hist[note.pitch % 12] += max(0.25, note.end - note.start)
            self._key_hist_changed = True

    def end_of_input(self, time_steps: float) -> None:
        """Offline: the player will play no more; anything held ends at ``time_steps``."""
        for pitch in list(self.held):
            self.note_off(time_steps, pitch)
        self._end_of_input = float(time_steps)

    def configure(self, settings: PlaySettings) -> None:
        settings.validate()
        mode_changed = settings.mode != self.settings.mode
        lock_changed = settings.key_lock != self.settings.key_lock
        self.settings = settings
        if settings.key_lock != "auto" or lock_changed:
            self._lock = self._fixed_lock()
            self._key_hist_changed = True  # an automatic lock is estimated again at the next chance
        self.sampler.configure(settings.sampling(self._lock))
        if mode_changed:
            self.answer_until = -1
            self.phrase_start = None
            self.stopped = False

    def set_meter(self, meter: rep.Meter | None, bar_origin_step: int = 0) -> None:
        """A new meter (or none) from ``bar_origin_step``, a bar line, on."""
        self.meter = meter
        self.bar_origin_step = bar_origin_step

    def set_step_seconds(self, step_seconds: float) -> None:
        """A new tempo: the length of a 16th in seconds (the answer's silence is measured in it)."""
        if not step_seconds > 0:
            raise ValueError(f"step_seconds must be positive, not {step_seconds}")
        self.step_seconds = step_seconds

    def resume(self) -> None:
        """After a panic: free play starts again (the other modes resume with the player's next note)."""
        self.stopped = False

    def panic(self) -> list[tuple[int, int, int]]:
        """Stop at once: the sounding note ends and any pending answer is dropped."""
        self.answer_until = -1
        self.phrase_start = None
        self.stopped = True
        for pitch in list(self.held):  # a stuck key (a lost note-off) is let go too
            self.note_off(self.last_step + 1, pitch)
        return self._silence()

    def finish(self) -> list[tuple[int, int, int]]:
        return self._silence()

    @property
    def busy(self) -> bool:
        """Whether the partner may still play without more input from the player."""
        if self.settings.mode == "free":
            return not self.stopped
        if self.settings.mode == "accompany":
            return self.sounding is not None
        return self.phrase_start is not None or self.answer_until > self.last_step + 1

    # -- one grid step -------------------------------------------------------------------------
    def step(self, k: int) -> list[tuple[int, int, int]]:
        """The notes to stop and start at step ``k``: (NOTE_OFF | NOTE_ON, pitch, velocity)."""
        if k <= self.last_step:
            raise ValueError(f"steps must increase: step {k} after {self.last_step}")
        self.last_step = k
        mode = self.settings.mode
        if self.stopped:
            self._prune(keep_from=k - 1)
            return self._silence()
        if mode == "free":
            self._prune(keep_from=k - 1)
            return self._generate(k, None)
        if mode == "accompany":
            return self._accompany(k)
        return self._answer(k)

    def bar_pos(self, k: int) -> int | None:
        if self.meter is None:
            return None
        return (k - self.bar_origin_step) % self.meter.bar_steps

    # -- modes -----------------------------------------------------------------------------------
    def _answer(self, k: int) -> list[tuple[int, int, int]]:
        s = self.settings
        if self.answer_from <= k < self.answer_until:
            return self._generate(k, None)
        actions = self._silence() if k >= self.answer_until and self.sounding is not None else []
        if self.phrase_start is None or self.held:
            return actions
        phrase = self.notes[self.phrase_start:]
        if any(n.start >= k for n in phrase):
            return actions  # part of the phrase lies at or after this step: not over yet
        end = max(n.end for n in phrase)
        input_over = self._end_of_input is not None and k >= self._end_of_input
        if s.mode == "continue" and self.whole_input_is_prime:
            ready = input_over  # the whole input is the prime: continue where it ends, not before
        elif s.mode == "continue" and input_over:
            ready = True  # offline, the input is over: no need to wait
        else:
            ready = (k - end) * self.step_seconds >= s.silence_seconds - 1e-9
        if not ready:
            return actions
        start_step = int(round(phrase[0].start))
        end_step = max(start_step + 1, int(round(end)))
        if s.mode == "continue":
            length = min(MAX_ANSWER_STEPS * 16, s.continue_bars * (self.meter.bar_steps if self.meter else 16))
            begin = max(k, end_step)
        else:
            length = min(MAX_ANSWER_STEPS, max(1, int(round(s.answer_ratio * (end_step - start_step)))))
            begin = k
            if self.meter is not None and s.wait_for_bar:
                pos = self.bar_pos(k)
                begin = k if pos == 0 else k + self.meter.bar_steps - pos
        self._prime(phrase, start_step, end_step, begin)
        self.phrase_start = None
        self._prune()
        self.answer_from, self.answer_until = begin, begin + length
        if begin == k:
            return actions + self._generate(k, None)
        return actions

    def _accompany(self, k: int) -> list[tuple[int, int, int]]:
        tail = self.settings.accompany_tail_bars * (self.meter.bar_steps if self.meter else 16)
        last = max((n.end if n.end is not None else k for n in self.notes), default=None)
        if last is None or k - last > tail or (self._end_of_input is not None and k >= self._end_of_input):
            return self._silence()
        mask = 0
        for n in self.notes:  # the player's pitch classes sounding in [k-1, k)
            if n.start < k and (n.end is None or n.end > k - 1):
                mask |= 1 << (n.pitch % 12)
        self._velocity = self._player_velocity(scale=0.9)
        self._update_auto_lock(None)
        self._prune(keep_from=k - 1)
        return self._generate(k, mask)

    # -- the model --------------------------------------------------------------------------------
    def _generate(self, k: int, condition: int | None) -> list[tuple[int, int, int]]:
        self._feed_gap(k)
        token = advance(self.model, self.voice, self.bar_pos(k), self.meter, condition, sampler=self.sampler)
        self.last_fed_step = k + 1
        actions: list[tuple[int, int, int]] = []
        if token == rep.HOLD:
            return actions
        if self.sounding is not None:  # the new token ends our note (advance() already moved the voice on)
            actions.append((ev.NOTE_OFF, self.sounding, 0))
            self.sounding = None
        if token >= rep.NOTE_BASE:
            pitch = rep.token_pitch(token)
            velocity = self._velocity
            if self.meter is not None and self.bar_pos(k) == 0:
                velocity = min(127, velocity + ACCENT)
            actions.append((ev.NOTE_ON, pitch, velocity))
            self.sounding = pitch
            self.generated_notes += 1
        return actions

    def _feed_gap(self, k: int) -> None:
        """Rests for the steps since the model last ran (at most MAX_GAP_RESTS), so that it knows
        time passed."""
        if self.last_fed_step < 0:
            self.last_fed_step = k
            return
        for j in range(max(self.last_fed_step, k - MAX_GAP_RESTS), k):
            advance(self.model, self.voice, self.bar_pos(j), self.meter, None, forced=rep.REST)
        self.last_fed_step = k

    def _prime(self, phrase: list[_PlayerNote], start_step: int, end_step: int, begin: int) -> None:
        """Feed the player's phrase (and the silence after it) to the model, as forced tokens."""
        notes = [(int(round(n.start)) - start_step, max(int(round(n.start)) + 1, int(round(n.end))) - start_step,
                  n.pitch) for n in phrase]
        tokens = rep.notes_to_tokens(notes, end_step - start_step)
        # Never feed a step twice (an answer cut short has fed steps the new phrase may start in).
        first = max(start_step, end_step - MAX_PHRASE_STEPS, self.last_fed_step)
        self._feed_gap(first)
        for j in range(first, end_step):
            token = int(tokens[j - start_step])
            if j == first and token == rep.HOLD:
                # The phrase's note began on a step the model had already played (the player cut
                # into an answer): the model hears it start here instead.
                onsets = np.flatnonzero(tokens[: j - start_step] >= rep.NOTE_BASE)
                token = int(tokens[onsets[-1]]) if len(onsets) else rep.REST
            advance(self.model, self.voice, self.bar_pos(j), self.meter, None, forced=token)
        # The rests until the answer begins are fed when it begins (_feed_gap), so a new phrase that
        # comes first finds the model where the old one ended.
        self.last_fed_step = max(self.last_fed_step, end_step)
        self.voice.sounding = None  # the phrase's last note is the player's, not the model's to hold
        self._velocity = self._player_velocity(phrase=phrase)
        self._update_auto_lock(phrase)

    def _update_auto_lock(self, phrase: list[_PlayerNote] | None) -> None:
        if self.settings.key_lock == "off":
            return
        if self.settings.key_lock != "auto":
            lock = self._fixed_lock()
        else:
            if phrase is not None:
                notes = [(0, max(1, int(round((n.end or n.start) - n.start))), n.pitch) for n in phrase]
            else:
                if not self._key_hist_changed:
                    return  # the estimate only changes when a player's note ends
                self._key_hist_changed = False
                notes = [(0, max(1, int(round(w))), pc) for pc, w in enumerate(self._key_hist) if w > 0]
            if not notes:
                return
            lock = rep.scale_pitch_classes(*rep.estimate_key(notes))
        if lock is not None and not any(p % 12 in lock for p in range(self.settings.low_pitch,
                                                                      self.settings.high_pitch + 1)):
            lock = None  # the key leaves no note in the range: play unlocked rather than not at all
        if lock != self._lock:
            self._lock = lock
            self.sampler.configure(self.settings.sampling(lock))

    def _fixed_lock(self) -> frozenset[int] | None:
        key = parse_key(self.settings.key_lock)
        return rep.scale_pitch_classes(*key) if key else None

    def _player_velocity(self, phrase=None, scale: float = 1.0) -> int:
        if self.settings.velocity:
            return self.settings.velocity
        recent = phrase if phrase is not None else self.notes[-8:]
        if not recent:
            return DEFAULT_VELOCITY
        return int(np.clip(round(scale * np.mean([n.velocity for n in recent])), 1, 127))

    def _silence(self) -> list[tuple[int, int, int]]:
        if self.sounding is None:
            return []
        pitch, self.sounding = self.sounding, None
        self.voice.sounding = None
        return [(ev.NOTE_OFF, pitch, 0)]

    def _prune(self, keep_from: float | None = None) -> None:
        """Forget player notes that no longer matter (keeps memory flat in a long session)."""
        if self.phrase_start is not None:
            keep = self.phrase_start
        elif keep_from is not None:
            keep = next((i for i, n in enumerate(self.notes) if n.end is None or n.end > keep_from - 64),
                        len(self.notes))
        else:
            keep = len(self.notes)
        keep = min(keep, max(0, len(self.notes) - 8))  # the last few stay, for velocity
        if keep > 0:
            del self.notes[:keep]
            if self.phrase_start is not None:
                self.phrase_start -= keep


def apply_control(settings: PlaySettings, param: str, value: float) -> tuple[PlaySettings, str | None]:
    """A mapped controller's value (already scaled by the patch's mapping) → new settings, and
    "panic" or "resume" when it asks for one (a panic control at 0.5 and above panics; back below,
    it resumes). ``param`` is one of the patch's ``melody_*`` parameters."""
    if param == "melody_panic":
        return settings, "panic" if value >= 0.5 else "resume"
    if param == "melody_temperature":
        return replace(settings, temperature=float(value)), None
    if param == "melody_density":
        return replace(settings, density=float(value)), None
    if param == "melody_answer_length":
        return replace(settings, answer_ratio=float(value)), None
    if param == "melody_mode":
        # value in [0, len(MODES) - 1] → equal shares of the range: 0-31 answer, 32-63 continue, ...
        index = int(max(0.0, value) * len(MODES) / (len(MODES) - 1))
        return replace(settings, mode=MODES[min(index, len(MODES) - 1)]), None
    if param == "melody_key_lock":
        return replace(settings, key_lock="auto" if value >= 0.5 else "off"), None
    raise ValueError(f"{param!r} is not a melody parameter")


def to_events(actions: list[tuple[int, int, int]], frame: int, channel: int) -> list[ev.Event]:
    """A step's actions → engine events at ``frame`` on ``channel`` (note-offs first, as returned), for a
    host that schedules the partner's notes into the :class:`~liveart.engine.Engine`."""
    return [ev.Event(frame, kind, channel, pitch, velocity) for kind, pitch, velocity in actions]
