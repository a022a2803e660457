"""Event types: everything the engine consumes, stamped in audio frames.

An ``Event`` is a plain named tuple so hosts can build them cheaply: ``frame`` is the absolute
audio frame at which it happens (frame 0 is the start of the performance), ``kind`` one of the
constants below, ``channel`` 0-15, and two data fields whose meaning depends on the kind:

=================  =========================  ==============================
kind               a                          b
=================  =========================  ==============================
NOTE_ON            note number 0-127          velocity 1-127
NOTE_OFF           note number 0-127          release velocity (unused)
CONTROL_CHANGE     controller number 0-127    value 0-127
PITCH_BEND         bend -8192..8191           0
PROGRAM_CHANGE     program 0-127              0
TEMPO              microseconds per beat      0
=================  =========================  ==============================
"""

from __future__ import annotations

from typing import NamedTuple

NOTE_ON = 0
NOTE_OFF = 1
CONTROL_CHANGE = 2
PITCH_BEND = 3
PROGRAM_CHANGE = 4
TEMPO = 5

KIND_NAMES = {
    NOTE_ON: "note_on",
    NOTE_OFF: "note_off",
    CONTROL_CHANGE: "control_change",
    PITCH_BEND: "pitch_bend",
    PROGRAM_CHANGE: "program_change",
    TEMPO: "tempo",
}

# Controllers the engine itself understands (General MIDI numbers).
CC_MOD_WHEEL = 1
CC_VOLUME = 7
CC_PAN = 10
CC_EXPRESSION = 11
CC_SUSTAIN = 64
CC_BRIGHTNESS = 74
CC_ALL_SOUND_OFF = 120
CC_RESET_CONTROLLERS = 121
CC_ALL_NOTES_OFF = 123


class Event(NamedTuple):
    frame: int
    kind: int
    channel: int = 0
    a: int = 0
    b: int = 0

    def describe(self) -> str:
        return f"{KIND_NAMES.get(self.kind, self.kind)} ch{self.channel + 1} a={self.a} b={self.b} @ {self.frame}"


def note_on(frame: int, channel: int, note: int, velocity: int) -> Event:
    if velocity == 0:
        return Event(frame, NOTE_OFF, channel, note, 0)
    return Event(frame, NOTE_ON, channel, note, velocity)


def note_off(frame: int, channel: int, note: int) -> Event:
    return Event(frame, NOTE_OFF, channel, note, 0)


def control_change(frame: int, channel: int, control: int, value: int) -> Event:
    return Event(frame, CONTROL_CHANGE, channel, control, value)


def pitch_bend(frame: int, channel: int, bend: int) -> Event:
    return Event(frame, PITCH_BEND, channel, bend, 0)


def program_change(frame: int, channel: int, program: int) -> Event:
    return Event(frame, PROGRAM_CHANGE, channel, program, 0)


def tempo(frame: int, microseconds_per_beat: int) -> Event:
    return Event(frame, TEMPO, 0, microseconds_per_beat, 0)
