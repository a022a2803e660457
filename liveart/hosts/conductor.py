"""The live host's conductor thread: the clock (internal, or following an external MIDI clock) and
the melody model's :class:`~liveart.melody.play.Partner`. It runs each 16th step a few milliseconds
ahead of the audio, so the model's notes land on the clock's grid at their exact frame; it reads the
player's messages and the clock from the compiled cycle's ``control`` ring and hands the model's
events to it through ``host`` (the engine) and ``out`` (MIDI out), stamped with their frames.
Mixed into :class:`~liveart.hosts.live.LiveHost`, whose state it shares."""

from __future__ import annotations

import time

from .. import events as ev
from ..midi.messages import CLOCK_START, CLOCK_STOP, CLOCK_TICK
from ..midi.messages import message_of as _message_of
from ..realtime import callback as cb
from .realtime import raise_priority

DRUM_CHANNEL = 9
LEAD_SECONDS = 0.004  # the conductor decides a step this long (plus two blocks) before it sounds
CONDUCTOR_POLL_SECONDS = 0.005  # the conductor looks at its input at least this often


def _message_row(frame: int, message) -> list[int]:
    """(frame, length, three bytes): a row of the cycle's message rings."""
    b = list(message)[:3]
    return [frame, len(b)] + b + [0] * (3 - len(b))


class Conductor:
    """The conductor's methods (a mixin of LiveHost)."""

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
        out = self.rt.out
        control = self.rt.control
        if send_clock:
            out.push(_message_row(clock.start_frame, (CLOCK_START,)))
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
            for row in control.pop_many():
                frame, message = int(row[0]), tuple(int(x) for x in row[2 : 2 + row[1]])
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
                for f, message in batch:
                    out.push(_message_row(f, message))
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
            out.push(_message_row(int(self._frame_now()), (CLOCK_STOP,)))

    def _generated(self, events: list[ev.Event]) -> None:
        """The model's notes (conductor thread): into the cycle's ring, and out as MIDI at their frames."""
        for e in events:
            self.rt.host.push([e.frame, e.kind, e.channel, e.a, e.b])
            if self.midi_out is not None:
                self.rt.out.push(_message_row(e.frame, _message_of(e)))
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
                self.rt.host.push([e.frame, e.kind, e.channel, e.a, e.b])
        self.rt.host.push([0, cb.PANIC, 0, 0, 0])
        if self.midi_out is not None:
            self.rt.now.push([0, cb.OFFS_SOUNDING, 0, 0, 0])
