"""MIDI files → engine events, through mido.

Type 0 and type 1 files are merged into one time line with their tempo map (mido converts ticks
to seconds); type 2 files are refused. Anything mido cannot parse becomes a :class:`MidiFileError`
with one line that names the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .. import events as ev
from ..errors import MidiFileError

MIN_DURATION_SECONDS = 0.001


@dataclass
class MidiPerformance:
    """A MIDI file as a time line in seconds: (time_seconds, kind, channel, a, b) tuples, sorted."""

    path: str
    timeline: list[tuple[float, int, int, int, int]] = field(default_factory=list)
    duration_seconds: float = 0.0
    note_count: int = 0

    def to_events(self, sample_rate: int) -> list[ev.Event]:
        return [ev.Event(int(round(t * sample_rate)), kind, ch, a, b) for t, kind, ch, a, b in self.timeline]


def open_midi_file(path: str | Path):
    """A readable type 0 or 1 MIDI file → ``mido.MidiFile``; anything else → MidiFileError."""
    import mido  # lazy: keeps `import liveart` light

    path = Path(path)
    if not path.exists():
        raise MidiFileError(f"{path}: no such file")
    if path.is_dir():
        raise MidiFileError(f"{path}: is a directory, not a MIDI file")
    if not path.is_file():
        raise MidiFileError(f"{path}: not a regular file (a pipe or a device?); give a MIDI file")
    try:
        midi = mido.MidiFile(str(path), clip=True)
    except PermissionError as e:
        raise MidiFileError(f"{path}: cannot read the file (permission denied)") from e
    except Exception as e:  # mido raises many types on malformed input; all mean "not MIDI we can read"
        raise MidiFileError(f"{path}: not a readable MIDI file ({_reason(e)})") from e
    if midi.type == 2:
        raise MidiFileError(f"{path}: type 2 (asynchronous) MIDI files are not supported; convert it to type 1")
    if midi.ticks_per_beat <= 0:
        raise MidiFileError(f"{path}: not a readable MIDI file (ticks per beat is {midi.ticks_per_beat})")
    return midi


def read_midi_file(path: str | Path, midi=None) -> MidiPerformance:
    """A MIDI file (or an already opened ``mido.MidiFile`` given as ``midi``) → its time line."""
    if midi is None:
        midi = open_midi_file(path)
    path = Path(path)
    perf = MidiPerformance(str(path))
    now = 0.0
    timeline = perf.timeline
    open_notes: dict[tuple[int, int], int] = {}  # (channel, note) → notes sounding
    last_on: dict[tuple[int, int], int] = {}  # (channel, note) → timeline index of its latest note-on
    try:
        for msg in midi:
            now += msg.time
            t = msg.type
            if t == "note_on" and msg.velocity > 0:
                key = (msg.channel, msg.note)
                open_notes[key] = open_notes.get(key, 0) + 1
                last_on[key] = len(timeline)
                timeline.append((now, ev.NOTE_ON, msg.channel, msg.note, msg.velocity))
                perf.note_count += 1
            elif t in ("note_on", "note_off"):
                key = (msg.channel, msg.note)
                off = (now, ev.NOTE_OFF, msg.channel, msg.note, 0)
                index = last_on.get(key)
                if open_notes.get(key, 0) >= 2 and index is not None and timeline[index][0] == now:
                    # A repeated key written as on-then-off at one instant: the off ends the older
                    # note, so it goes before the new note-on (otherwise it would end the new one).
                    timeline.insert(index, off)
                    for k, i in last_on.items():
                        if i >= index:
                            last_on[k] = i + 1
                else:
                    timeline.append(off)
                open_notes[key] = max(0, open_notes.get(key, 0) - 1)
            elif t == "control_change":
                timeline.append((now, ev.CONTROL_CHANGE, msg.channel, msg.control, msg.value))
            elif t == "pitchwheel":
                timeline.append((now, ev.PITCH_BEND, msg.channel, msg.pitch, 0))
            elif t == "program_change":
                timeline.append((now, ev.PROGRAM_CHANGE, msg.channel, msg.program, 0))
            elif t == "set_tempo" and msg.tempo > 0:  # mido times a tempo of 0 as no time at all
                timeline.append((now, ev.TEMPO, 0, msg.tempo, 0))
    except Exception as e:
        raise MidiFileError(f"{path}: not a readable MIDI file ({_reason(e)})") from e
    if not (now >= 0.0 and now < float("inf")):
        raise MidiFileError(f"{path}: not a readable MIDI file (its length is {now} s)")
    perf.duration_seconds = now
    if perf.note_count == 0:
        raise MidiFileError(f"{path}: contains no notes")
    if now < MIN_DURATION_SECONDS:
        raise MidiFileError(f"{path}: the whole piece lasts {now * 1000:.3f} ms (a tempo near 0, or every event "
                            "at one instant); nothing to render")
    return perf


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    text = text[:120]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


@dataclass
class MidiNotes:
    """A MIDI file's notes in ticks, with what is needed to put new notes on its grid."""

    path: str
    midi: object  # the mido.MidiFile
    ticks_per_beat: int
    notes: list[tuple[int, int, int, int, int]]  # (start_tick, end_tick, channel, pitch, velocity), sorted
    time_signatures: list[tuple[int, int, int]]  # (tick, numerator, denominator)
    tempos: list[tuple[int, int]]  # (tick, microseconds per beat); starts with (0, 500000) if the file has none
    end_tick: int
    controls: list[tuple[int, int, int, int]] = field(default_factory=list)  # (tick, channel, control, value)

    def seconds_at(self, tick: float) -> float:
        """Seconds at ``tick`` through the tempo map; beyond the end, the last tempo goes on."""
        seconds = 0.0
        prev_tick, tempo = 0, self.tempos[0][1]
        for t, new_tempo in self.tempos:
            if t >= tick:
                break
            seconds += (t - prev_tick) * tempo / 1e6 / self.ticks_per_beat
            prev_tick, tempo = t, new_tempo
        return seconds + (tick - prev_tick) * tempo / 1e6 / self.ticks_per_beat


def read_midi_notes(path: str | Path, midi=None) -> MidiNotes:
    """The notes of a type 0 or 1 MIDI file in ticks (notes left open end at the file's end)."""
    import mido

    if midi is None:
        midi = open_midi_file(path)
    path = Path(path)
    notes = []
    open_notes: dict[tuple[int, int], list[tuple[int, int]]] = {}
    signatures: list[tuple[int, int, int]] = []
    tempos: list[tuple[int, int]] = []
    controls: list[tuple[int, int, int, int]] = []
    tick = 0
    try:
        for msg in mido.merge_tracks(midi.tracks):
            tick += msg.time
            t = msg.type
            if t == "note_on" and msg.velocity > 0:
                open_notes.setdefault((msg.channel, msg.note), []).append((tick, msg.velocity))
            elif t in ("note_on", "note_off"):
                started = open_notes.get((msg.channel, msg.note))
                if started:
                    start, velocity = started.pop(0)
                    notes.append((start, tick, msg.channel, msg.note, velocity))
            elif t == "time_signature":
                signatures.append((tick, msg.numerator, msg.denominator))
            elif t == "set_tempo" and msg.tempo > 0:
                tempos.append((tick, msg.tempo))
            elif t == "control_change":
                controls.append((tick, msg.channel, msg.control, msg.value))
    except Exception as e:
        raise MidiFileError(f"{path}: not a readable MIDI file ({_reason(e)})") from e
    for (channel, pitch), started in open_notes.items():
        for start, velocity in started:
            notes.append((start, tick, channel, pitch, velocity))
    if not notes:
        raise MidiFileError(f"{path}: contains no notes")
    if not tempos or tempos[0][0] > 0:
        tempos.insert(0, (0, 500000))
    notes.sort()
    return MidiNotes(str(path), midi, midi.ticks_per_beat, notes, signatures, tempos, tick, controls)
