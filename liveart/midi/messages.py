"""MIDI messages as bytes, once: status values, data lengths, and bytes <-> engine events.

The live host's compiled cycle (:mod:`liveart.realtime.callback`), the take writer, the clock
follower and the JACK test probe all read these; nothing else spells a status byte.
"""

from __future__ import annotations

import operator

from .. import events as ev

NOTE_OFF = 0x80
NOTE_ON = 0x90
POLY_PRESSURE = 0xA0
CONTROL_CHANGE = 0xB0
PROGRAM_CHANGE = 0xC0
CHANNEL_PRESSURE = 0xD0
PITCH_BEND = 0xE0
SONG_POSITION = 0xF2
CLOCK_TICK = 0xF8
CLOCK_START = 0xFA
CLOCK_CONTINUE = 0xFB
CLOCK_STOP = 0xFC
CLOCK_PULSES_PER_QUARTER = 24
# Data bytes after each channel status (high nibble): program change and channel pressure take one.
DATA_BYTES = {NOTE_OFF: 2, NOTE_ON: 2, POLY_PRESSURE: 2, CONTROL_CHANGE: 2, PROGRAM_CHANGE: 1,
              CHANNEL_PRESSURE: 1, PITCH_BEND: 2}


def as_bytes(message) -> tuple[int, ...] | None:
    """A MIDI message (bytes, a list of ints, a mido Message) as a tuple of byte values; None when
    it is not one."""
    if hasattr(message, "bytes") and callable(message.bytes):  # a mido Message
        try:
            message = message.bytes()
        except Exception:
            return None
    if isinstance(message, (bytes, bytearray, memoryview)):
        return tuple(bytes(message))
    if not isinstance(message, (list, tuple)):
        return None
    try:
        data = tuple(operator.index(b) for b in message)
    except TypeError:
        return None
    return data if all(0 <= b <= 0xFF for b in data) else None


def channel_message(message) -> bytes | None:
    """The message as bytes if it is one whole channel message (0x80-0xEF + its data), else None."""
    if isinstance(message, int):  # bytes(n) would be n zero bytes
        return None
    try:
        data = bytes(message)
    except (TypeError, ValueError):
        return None
    if not data or not 0x80 <= data[0] <= 0xEF:
        return None
    if len(data) != 1 + DATA_BYTES[data[0] & 0xF0] or any(b > 0x7F for b in data[1:]):
        return None
    return data


def is_note_off(message) -> bool:
    kind = message[0] & 0xF0
    return kind == NOTE_OFF or (kind == NOTE_ON and len(message) > 2 and message[2] == 0)


def message_of(e: ev.Event) -> tuple:
    """The channel message an engine event stands for (() for a tempo)."""
    if e.kind == ev.NOTE_ON:
        return (NOTE_ON | e.channel, e.a, e.b)
    if e.kind == ev.NOTE_OFF:
        return (NOTE_OFF | e.channel, e.a, 0)
    if e.kind == ev.CONTROL_CHANGE:
        return (CONTROL_CHANGE | e.channel, e.a, e.b)
    if e.kind == ev.PITCH_BEND:
        v = e.a + 8192
        return (PITCH_BEND | e.channel, v & 0x7F, v >> 7)
    if e.kind == ev.PROGRAM_CHANGE:
        return (PROGRAM_CHANGE | e.channel, e.a)
    return ()


def event_of(frame: int, message) -> ev.Event | None:
    """A channel message → an engine event at ``frame``, or None for what the engine ignores. (The
    live cycle does the same in compiled code: :func:`liveart.realtime.callback._player_message`.)"""
    if not message:
        return None
    status = message[0]
    kind, channel = status & 0xF0, status & 0x0F
    if kind == NOTE_ON and len(message) >= 3:
        return ev.note_on(frame, channel, message[1] & 0x7F, message[2] & 0x7F)
    if kind == NOTE_OFF and len(message) >= 3:
        return ev.note_off(frame, channel, message[1] & 0x7F)
    if kind == CONTROL_CHANGE and len(message) >= 3:
        return ev.control_change(frame, channel, message[1] & 0x7F, message[2] & 0x7F)
    if kind == PITCH_BEND and len(message) >= 3:
        return ev.pitch_bend(frame, channel, ((message[2] & 0x7F) << 7 | (message[1] & 0x7F)) - 8192)
    if kind == PROGRAM_CHANGE and len(message) >= 2:
        return ev.program_change(frame, channel, message[1] & 0x7F)
    return None
