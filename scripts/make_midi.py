"""Write the demo and benchmark MIDI files from Bach chorales in music21's corpus.

Run with the repository's virtual environment (music21 comes with the ``train`` extra)::

    .venv/bin/python scripts/make_midi.py

Writes, deterministically:

* ``liveart/data/demo.mid``: two chorales, about a minute, one tempo.
* ``scripts/bench/piece_5min.mid``: six chorales, 300 s, a tempo per chorale (about 100 bpm).

Both are type 1 files at 480 ticks per quarter: a conductor track (time signature, tempo, a marker
per chorale) and one track per voice on MIDI channels 1-4 (mido channels 0-3), each opening with a
General MIDI program change. Repeats are expanded and ties merged, every note has a real note_off,
and notes of one pitch never overlap on a channel. Chorales are placed on a common 4/4 bar grid
(an opening pickup gets a short bar of its own, later pickups fall just before a bar line) with at
least one beat of rest between them.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import mido

try:
    from music21 import chord, corpus, meter, note
except ImportError as e:  # music21 is a training dependency, not a run-time one
    raise SystemExit(
        "music21 is not installed; install it with `.venv/bin/pip install music21` "
        "(or the `train` extra)"
    ) from e

REPO_ROOT = Path(__file__).resolve().parent.parent
TICKS_PER_QUARTER = 480
BEATS_PER_BAR = 4
GAP_QUARTERS = 1.0  # least rest between two chorales
MORPH_STEP_QUARTERS = 0.25  # the mod wheel moves in 16th-note steps
RELEASE_VELOCITY = 64

# Velocity by position in the bar: strong beats a little louder, off-beats softer.
VELOCITY_DOWNBEAT = 80
VELOCITY_HALF_BAR = 74
VELOCITY_BEAT = 68
VELOCITY_OFFBEAT = 62
VELOCITY_MELODY_BOOST = 6  # the soprano carries the tune

VOICE_NAMES = ("Soprano", "Alto", "Tenor", "Bass")


@dataclasses.dataclass(frozen=True)
class PieceSpec:
    path: Path
    title: str
    chorales: tuple[str, ...]
    tempos_bpm: tuple[float, ...]  # one per chorale, cycled
    programs: tuple[int, ...]  # General MIDI program per voice, 0-based
    instrument_names: tuple[str, ...]
    target_seconds: float | None = None  # scale every tempo so the piece lasts this long
    # The mod wheel (CC 1) of one voice swells 0 -> 127 -> 0 over one chorale: with the default patch
    # that voice morphs through the timbre space towards the choir and back.
    morph_voice: int | None = None
    morph_chorale: int = 1


DEMO = PieceSpec(
    path=REPO_ROOT / "liveart" / "data" / "demo.mid",
    title="liveart demo: Bach chorales BWV 66.6 and 153.1",
    chorales=("bach/bwv66.6", "bach/bwv153.1"),
    tempos_bpm=(90.0,),
    programs=(73, 68, 41, 42),
    instrument_names=("Flute", "Oboe", "Viola", "Cello"),
    morph_voice=0,
)

BENCH_5MIN = PieceSpec(
    path=REPO_ROOT / "scripts" / "bench" / "piece_5min.mid",
    title="liveart benchmark: six Bach chorales, 5 minutes",
    chorales=(
        "bach/bwv267",
        "bach/bwv180.7",
        "bach/bwv347",
        "bach/bwv248.12-2",
        "bach/bwv10.7",
        "bach/bwv40.8",
    ),
    tempos_bpm=(104.0, 100.0, 108.0),
    programs=(40, 40, 41, 42),
    instrument_names=("Violin I", "Violin II", "Viola", "Cello"),
    target_seconds=300.0,
)


@dataclasses.dataclass
class Note:
    start_quarters: float
    end_quarters: float
    pitch: int
    velocity: int


def _velocity(start_quarters: float, voice: int, grid_origin_quarters: float) -> int:
    position = (start_quarters - grid_origin_quarters) % BEATS_PER_BAR
    if position == 0:
        velocity = VELOCITY_DOWNBEAT
    elif position == BEATS_PER_BAR / 2:
        velocity = VELOCITY_HALF_BAR
    elif position == int(position):
        velocity = VELOCITY_BEAT
    else:
        velocity = VELOCITY_OFFBEAT
    if voice == 0:
        velocity += VELOCITY_MELODY_BOOST
    return velocity


def _pickup_quarters(score) -> float:
    """Length of the anacrusis before the first bar line, in quarters (0 if none)."""
    first = score.parts[0].getElementsByClass("Measure")[0]
    if first.number == 0:
        return float(first.highestTime)
    return 0.0


def _load_chorale(name: str):
    score = corpus.parse(name)
    if len(score.parts) != 4:
        raise ValueError(f"{name}: expected 4 parts, found {len(score.parts)}")
    meters = {ts.ratioString for ts in score.recurse().getElementsByClass(meter.TimeSignature)}
    if meters != {"4/4"}:
        raise ValueError(f"{name}: only 4/4 chorales fit the bar grid, found {sorted(meters)}")
    try:
        score = score.expandRepeats()
    except Exception as e:  # a chorale whose repeats music21 cannot expand plays through once
        print(f"  {name}: repeats not expanded ({e})", file=sys.stderr)
    return score


def _voice_notes(part, offset_quarters: float, voice: int, grid_origin_quarters: float) -> list[Note]:
    notes = []
    for element in part.stripTies().flatten().notes:
        duration = float(element.duration.quarterLength)
        if duration <= 0:  # grace notes have no length of their own
            continue
        start = offset_quarters + float(element.offset)
        if isinstance(element, note.Note):
            pitches = [element.pitch.midi]
        elif isinstance(element, chord.Chord):
            pitches = [p.midi for p in element.pitches]
        else:
            continue
        for pitch in pitches:
            notes.append(Note(start, start + duration, pitch, _velocity(start, voice, grid_origin_quarters)))
    return notes


def _remove_overlaps(notes: list[Note]) -> list[Note]:
    """Cut a note short where the next note of the same pitch starts, so note-offs pair up."""
    by_pitch: dict[int, list[Note]] = {}
    for n in sorted(notes, key=lambda n: (n.pitch, n.start_quarters, n.end_quarters)):
        same = by_pitch.setdefault(n.pitch, [])
        if same and same[-1].end_quarters > n.start_quarters:
            same[-1].end_quarters = n.start_quarters
            if same[-1].end_quarters <= same[-1].start_quarters:
                same.pop()
        same.append(n)
    return sorted((n for same in by_pitch.values() for n in same), key=lambda n: n.start_quarters)


def _ticks(quarters: float) -> int:
    return round(quarters * TICKS_PER_QUARTER)


def _to_track(events: list[tuple[int, int, mido.Message]]) -> mido.MidiTrack:
    """Absolute (tick, order, message) triples → a track with delta times and an end marker."""
    track = mido.MidiTrack()
    now = 0
    for tick, _, message in sorted(events, key=lambda e: (e[0], e[1])):
        track.append(message.copy(time=tick - now))
        now = tick
    track.append(mido.MetaMessage("end_of_track", time=0))
    return track


def build(spec: PieceSpec) -> mido.MidiFile:
    voices: list[list[Note]] = [[] for _ in VOICE_NAMES]
    tempo_map: list[tuple[float, float]] = []  # (start in quarters, bpm)
    markers: list[tuple[float, str]] = []
    end_quarters = 0.0
    grid_origin = 0.0  # the first full bar line; before it, the opening pickup bar
    spans: list[tuple[float, float]] = []  # each chorale's (start, end) in quarters
    for index, name in enumerate(spec.chorales):
        score = _load_chorale(name)
        pickup = _pickup_quarters(score)
        if index == 0:
            start = 0.0
            grid_origin = pickup
        else:
            # First bar line at or after the gap plus the pickup, so the chorale's bars match.
            earliest = end_quarters + GAP_QUARTERS + pickup - grid_origin
            bar_line = grid_origin + -(-earliest // BEATS_PER_BAR) * BEATS_PER_BAR
            start = bar_line - pickup
        for voice, part in enumerate(score.parts):
            voices[voice].extend(_voice_notes(part, start, voice, grid_origin))
        tempo_map.append((start, spec.tempos_bpm[index % len(spec.tempos_bpm)]))
        markers.append((start, name))
        end_quarters = start + float(score.highestTime)
        spans.append((start, end_quarters))
    voices = [_remove_overlaps(v) for v in voices]
    end_quarters = max(n.end_quarters for v in voices for n in v)

    if spec.target_seconds is not None:
        scale = _seconds(tempo_map, end_quarters) / spec.target_seconds
        tempo_map = [(q, bpm * scale) for q, bpm in tempo_map]

    midi = mido.MidiFile(type=1, ticks_per_beat=TICKS_PER_QUARTER)
    conductor: list[tuple[int, int, mido.Message]] = [
        (0, 0, mido.MetaMessage("track_name", name=spec.title)),
        (_ticks(grid_origin), 1, mido.MetaMessage("time_signature", numerator=4, denominator=4)),
    ]
    if grid_origin > 0:  # the opening pickup as a short bar of its own, e.g. 1/4
        numerator, denominator = _pickup_meter(grid_origin)
        conductor.append((0, 1, mido.MetaMessage(
            "time_signature", numerator=numerator, denominator=denominator)))
    previous_tempo = None
    for q, bpm in tempo_map:
        tempo = mido.bpm2tempo(bpm)
        if tempo != previous_tempo:
            conductor.append((_ticks(q), 2, mido.MetaMessage("set_tempo", tempo=tempo)))
            previous_tempo = tempo
    for q, name in markers:
        conductor.append((_ticks(q), 3, mido.MetaMessage("marker", text=name)))
    midi.tracks.append(_to_track(conductor))

    for channel, notes in enumerate(voices):
        label = f"{VOICE_NAMES[channel]} ({spec.instrument_names[channel]})"
        events: list[tuple[int, int, mido.Message]] = [
            (0, 0, mido.MetaMessage("track_name", name=label)),
            (0, 1, mido.Message("program_change", channel=channel, program=spec.programs[channel])),
        ]
        if channel == spec.morph_voice:
            events.extend(_morph_events(channel, *spans[spec.morph_chorale]))
        for n in notes:
            # At one tick, note_offs (order 2) come before note_ons (order 3).
            events.append((_ticks(n.start_quarters), 3, mido.Message(
                "note_on", channel=channel, note=n.pitch, velocity=n.velocity)))
            events.append((_ticks(n.end_quarters), 2, mido.Message(
                "note_off", channel=channel, note=n.pitch, velocity=RELEASE_VELOCITY)))
        midi.tracks.append(_to_track(events))
    return midi


def _morph_events(channel: int, start: float, end: float) -> list[tuple[int, int, mido.Message]]:
    """CC 1 rising 0 -> 127 over the first half of [start, end) and falling back over the second."""
    events = []
    steps = int((end - start) // MORPH_STEP_QUARTERS)
    previous = None
    for k in range(steps + 1):
        u = k / steps
        value = int(round(127 * (1 - abs(2 * u - 1))))
        if value != previous:
            events.append((_ticks(start + k * MORPH_STEP_QUARTERS), 1, mido.Message(
                "control_change", channel=channel, control=1, value=value)))
            previous = value
    return events


def _pickup_meter(pickup_quarters: float) -> tuple[int, int]:
    """A pickup's length as a time signature (1 quarter → 1/4, 1.5 quarters → 3/8)."""
    for denominator in (4, 8, 16, 32):
        numerator = pickup_quarters * denominator / 4
        if numerator == int(numerator):
            return int(numerator), denominator
    raise ValueError(f"a pickup of {pickup_quarters} quarters has no time signature")


def _seconds(tempo_map: list[tuple[float, float]], end_quarters: float) -> float:
    total = 0.0
    bounds = [q for q, _ in tempo_map[1:]] + [end_quarters]
    for (q, bpm), next_q in zip(tempo_map, bounds):
        total += (next_q - q) * 60.0 / bpm
    return total


def summarize(path: Path) -> str:
    midi = mido.MidiFile(path)
    per_channel: dict[int, int] = {}
    tempos = []
    for track in midi.tracks:
        for message in track:
            if message.type == "note_on" and message.velocity > 0:
                per_channel[message.channel] = per_channel.get(message.channel, 0) + 1
            elif message.type == "set_tempo":
                tempos.append(round(mido.tempo2bpm(message.tempo), 1))
    counts = ", ".join(f"ch{c + 1}: {n}" for c, n in sorted(per_channel.items()))
    return (f"{path.relative_to(REPO_ROOT)}: {midi.length:.2f} s, type {midi.type}, "
            f"tempos {tempos} bpm, notes {counts}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    for spec in (DEMO, BENCH_5MIN):
        midi = build(spec)
        spec.path.parent.mkdir(parents=True, exist_ok=True)
        midi.save(spec.path)
        print(summarize(spec.path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
