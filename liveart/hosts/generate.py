"""Offline melody generation: a MIDI file in, the model's part added, a MIDI file out.

The file's notes play the performer; a :class:`~liveart.melody.play.Partner` is driven over the
file's 16th-note grid exactly as the live host drives it (the performer's notes reach it before the
step they precede), and its notes are written on a new track, on the file's grid and tempo map.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from .. import events as ev
from ..errors import MidiFileError, OutputError, RenderError
from ..melody import representation as rep
from ..melody.model import MelodyModel
from ..melody.play import Partner, PlaySettings, apply_control
from ..midi.files import MidiNotes, read_midi_notes

DRUM_CHANNEL = 9
MELODY_PROGRAM = 73  # General MIDI flute: the model's part, unless told otherwise
TRACK_NAME = "liveart melody"
MAX_GENERATED_BARS = 1024
MAX_DRIVE_STEPS = 120_000  # 16ths the partner is driven over: 60 min at 125 quarter notes per minute
MIN_STEP_SECONDS = 0.005  # a 16th of 5 ms (3000 quarters per minute) ...
MAX_STEP_SECONDS = 5.0  # ... to 5 s (3 per minute): tempos the model can follow


@dataclass
class Generated:
    source: MidiNotes
    notes: list[tuple[int, int, int, int]]  # (start_step, end_step, pitch, velocity)
    channel: int
    meter: rep.Meter | None
    mode: str
    first_step: int  # the first step the partner played at
    seed: int

    def steps_to_ticks(self, step: float) -> int:
        """Ticks of the written file (whose resolution holds a 16th in whole ticks)."""
        tpb = self.source.ticks_per_beat
        tpb *= rep.STEPS_PER_QUARTER // math.gcd(tpb, rep.STEPS_PER_QUARTER)
        return int(round(step * tpb / rep.STEPS_PER_QUARTER))


def player_notes(source: MidiNotes, melody_channel: int | None, mode: str) -> list[tuple[float, float, int, int]]:
    """The performer's part in steps: (start, end, pitch, velocity).

    Accompaniment hears every pitched note; the other modes hear one line, the highest note at each
    moment of the chosen channel (or of all pitched channels).
    """
    tpb = source.ticks_per_beat
    pitched = [n for n in source.notes if n[2] != DRUM_CHANNEL]
    if not pitched:
        raise MidiFileError(f"{source.path}: has only drum notes (channel 10); the melody model needs pitched notes")
    if melody_channel == DRUM_CHANNEL:
        raise MidiFileError("channel 10 is the drum channel; the melody model hears pitched channels only")
    if melody_channel is not None:
        pitched = [n for n in pitched if n[2] == melody_channel]
        if not pitched:
            raise MidiFileError(f"{source.path}: no notes on channel {melody_channel + 1}")
    notes = [(s * rep.STEPS_PER_QUARTER / tpb, e * rep.STEPS_PER_QUARTER / tpb, p, v) for s, e, _, p, v in pitched]
    if mode == "accompany":
        return notes
    # Skyline: at each onset keep the highest note; a lower note is dropped when a higher one sounds.
    notes.sort(key=lambda n: (n[0], -n[2]))
    line: list[tuple[float, float, int, int]] = []
    for n in notes:
        if line and n[0] == line[-1][0]:
            continue  # same onset, lower note
        if line and n[0] < line[-1][1] and n[2] < line[-1][2]:
            continue  # starts under a sounding higher note
        if line and n[0] < line[-1][1]:
            prev = line[-1]
            line[-1] = (prev[0], n[0], prev[2], prev[3])  # the higher new note cuts the old one
        line.append(n)
    return line


def meters_of(source: MidiNotes) -> list[tuple[int, rep.Meter]]:
    """The file's meters as (step of the bar line where each begins, meter); 4/4 from the start
    when the file says none, as the MIDI standard has it."""
    meters = [(0, rep.Meter())]
    for tick, num, den in source.time_signatures:
        step = int(round(tick * rep.STEPS_PER_QUARTER / source.ticks_per_beat))
        if meters and meters[-1][0] == step:
            meters.pop()
        meters.append((step, rep.Meter.from_time_signature(num, den)))
    return meters


def bar_line_after(meters: list[tuple[int, rep.Meter]], start: float, bars: int) -> int:
    """The step of the ``bars``-th bar line after ``start``, through the file's meter changes."""
    count = 0
    for (step, meter), nxt in zip(meters, meters[1:] + [(None, None)]):
        line = step
        while nxt[0] is None or line < nxt[0]:
            if line > start:
                count += 1
                if count == bars:
                    return line
            line += meter.bar_steps
    raise AssertionError("unreachable: the last meter runs on for ever")


def tempos_of(source: MidiNotes) -> list[tuple[int, float]]:
    """(step, seconds per step) for each tempo of the file."""
    return [(int(round(tick * rep.STEPS_PER_QUARTER / source.ticks_per_beat)), tempo / 1e6 / rep.STEPS_PER_QUARTER)
            for tick, tempo in source.tempos]


def generate(source: MidiNotes, model: MelodyModel, settings: PlaySettings, bars: int = 8, seed: int = 0,
             melody_channel: int | None = None, free_time: bool = False, cc_map: dict | None = None) -> Generated:
    """Drive a partner over the file and return its notes.

    ``cc_map`` (a patch's :meth:`~liveart.patch.Patch.cc_map`): the file's controllers that a patch
    maps to ``melody_*`` parameters change the partner's settings (or panic it) from the step they
    fall before, as a performer's knobs would live.
    """
    settings.validate()
    if not 1 <= bars <= MAX_GENERATED_BARS:
        raise RenderError(f"bars must be 1 to {MAX_GENERATED_BARS}, not {bars}")
    mode = settings.mode
    meters = meters_of(source)
    tempos = tempos_of(source)
    for _, seconds in tempos:
        if not MIN_STEP_SECONDS <= seconds <= MAX_STEP_SECONDS:
            raise MidiFileError(f"{source.path}: a tempo of {15 / seconds:.6g} quarter notes per minute; the melody "
                                f"model follows {15 / MAX_STEP_SECONDS:g} to {15 / MIN_STEP_SECONDS:g}")
    played = player_notes(source, melody_channel, mode) if mode != "free" else []
    channel = free_channel(source)
    # The input ends where its last pitched note does (a held bass counts, not only the top line).
    end_input = max((e * rep.STEPS_PER_QUARTER / source.ticks_per_beat for s, e, ch, _, _ in source.notes
                     if ch != DRUM_CHANNEL), default=0.0) if played else 0.0
    bar_origin, meter = meters[0]
    partner = Partner(model, settings, seed=seed, meter=None if free_time else meter, bar_origin_step=bar_origin,
                      step_seconds=tempos[0][1])
    partner.whole_input_is_prime = mode == "continue"
    # The grid's changes (meter, tempo) reach the partner at their step.
    grid = [(step, "tempo", seconds) for step, seconds in tempos[1:]]
    if not free_time:
        grid += [(step, "meter", (m, step)) for step, m in meters[1:]]
    # Bars are counted in the meter where the model starts playing.
    start = 0 if mode == "free" else end_input
    meter = None if free_time else next(m for step, m in reversed(meters) if step <= max(start, 0))
    bar_steps = meter.bar_steps if meter else 16
    if mode == "free":
        first, last = 0, bar_line_after([(0, rep.Meter())] if free_time else meters, 0, bars)
    else:
        first = int(math.floor(min(n[0] for n in played)))
        # Long enough for the last answer after its silence; the partner says when it is done.
        silence_steps = int(math.ceil(settings.silence_seconds / min(t for _, t in tempos)))
        last = int(math.ceil(end_input)) + silence_steps + 2 * bar_steps + max(
            bars * bar_steps, int(math.ceil(settings.answer_ratio * (end_input - first))))
    if last - first > MAX_DRIVE_STEPS:
        raise RenderError(f"{source.path}: the model would play {last - first:,} steps (16ths); the limit is "
                          f"{MAX_DRIVE_STEPS:,} (fewer bars, or a shorter piece)")
    controls = []
    for tick, cc_channel, control, value in source.controls:
        for m in (cc_map or {}).get(control, ()):
            if m.param.startswith("melody_") and (m.channel is None or m.channel == cc_channel):
                controls.append((tick * rep.STEPS_PER_QUARTER / source.ticks_per_beat, m.param, m.value(value)))
    if mode == "continue":
        partner.configure(replace(settings, continue_bars=bars))
    out = drive(partner, played, first, last, controls, end_input=None if mode == "free" else end_input, grid=grid)
    return Generated(source, sorted(out), channel, meter, mode, first, seed)


def drive(partner: Partner, played, first: int, last: int, controls=(), end_input: float | None = None, grid=()):
    """Run ``partner`` over steps ``first`` .. ``last`` as a live host would, and return its notes.

    ``played``: the performer's notes (start_step, end_step, pitch, velocity), fractions allowed; each
    reaches the partner before the first step after it. ``controls``: (step, param, value) melody
    controls, applied the same way. ``end_input``: the step where the performer's input ends (the
    partner is told, so a continuation starts there); None for no end (free run). ``grid``:
    (step, "meter" | "tempo", value) changes of the grid, applied from their step on. Stops early when
    the input is over and the partner has nothing more to play. Returns (start, end, pitch, velocity)
    notes in steps, sorted; every note ends.
    """
    # At one instant, note-offs before note-ons.
    events = sorted([(s, 1, p, v) for s, e, p, v in played] + [(e, 0, p, 0) for s, e, p, v in played],
                    key=lambda x: (x[0], x[1]))
    controls = sorted(controls, key=lambda c: c[0])
    grid = sorted(grid, key=lambda g: g[0])
    out: list[tuple[int, int, int, int]] = []
    open_notes: dict[int, tuple[int, int]] = {}

    def apply(k, actions):
        for kind, pitch, velocity in actions:
            if kind == ev.NOTE_OFF:
                start, vel = open_notes.pop(pitch)
                out.append((start, k, pitch, vel))
            else:
                open_notes[pitch] = (k, velocity)

    def deliver(i, until):
        # Only what happened before the step: live, a step is decided before its instant, so a
        # note played on the step itself is heard from the next step on (and offline the same).
        while i < len(events) and (until is None or events[i][0] < until):
            t, on, p, v = events[i]
            partner.note_on(t, p, v) if on else partner.note_off(t, p)
            i += 1
        return i

    i = ci = gi = 0
    input_over = False
    for k in range(first, last + 1):
        while gi < len(grid) and grid[gi][0] <= k:
            _, kind, value = grid[gi]
            partner.set_meter(*value) if kind == "meter" else partner.set_step_seconds(value)
            gi += 1
        i = deliver(i, k)
        if not input_over and end_input is not None and k >= end_input:
            i = deliver(i, None)
            partner.end_of_input(end_input)
            input_over = True
        while ci < len(controls) and controls[ci][0] < k:
            _, param, value = controls[ci]
            new_settings, action = apply_control(partner.settings, param, value)
            if action == "panic":
                apply(k, partner.panic())
            elif action == "resume":
                partner.resume()
            elif new_settings != partner.settings:
                partner.configure(new_settings)
            ci += 1
        if k == last:
            break
        apply(k, partner.step(k))
        if input_over and not partner.busy:
            k += 1  # the last step played lasts until the next
            break
    apply(k, partner.finish())
    return sorted(out)


def free_channel(source: MidiNotes) -> int:
    """The first channel (not 10) that the file plays nothing on: the model's part goes there."""
    used = {n[2] for n in source.notes}
    for channel in range(16):
        if channel != DRUM_CHANNEL and channel not in used:
            return channel
    raise MidiFileError(f"{source.path}: plays on all 15 pitched channels; the model's part needs a free one")


def combined_midi(result: Generated, program: int = MELODY_PROGRAM):
    """The source file with the generated part added on a new track (a type 1 file)."""
    import mido

    src = result.source.midi
    # A 16th must be a whole number of ticks: a file with a coarser resolution is scaled up.
    scale = rep.STEPS_PER_QUARTER // math.gcd(src.ticks_per_beat, rep.STEPS_PER_QUARTER)
    out = mido.MidiFile(type=1, ticks_per_beat=src.ticks_per_beat * scale)
    for track in src.tracks:
        out.tracks.append(mido.MidiTrack(msg.copy(time=msg.time * scale) for msg in track))
    ch = result.channel
    timed = [(0, 0, mido.MetaMessage("track_name", name=TRACK_NAME, time=0)),
             (0, 1, mido.Message("program_change", channel=ch, program=program, time=0))]
    for start, end, pitch, velocity in result.notes:
        timed.append((result.steps_to_ticks(start), 3, mido.Message("note_on", channel=ch, note=pitch,
                                                                     velocity=velocity, time=0)))
        timed.append((result.steps_to_ticks(end), 2, mido.Message("note_off", channel=ch, note=pitch, velocity=0,
                                                                   time=0)))
    timed.sort(key=lambda x: (x[0], x[1]))
    track = mido.MidiTrack()
    now = 0
    for tick, _, msg in timed:
        track.append(msg.copy(time=tick - now))
        now = tick
    track.append(mido.MetaMessage("end_of_track", time=0))
    out.tracks.append(track)
    return out


def check_midi_output(path: Path, source: Path | None = None) -> None:
    """Fail early, before any work, on a MIDI output that cannot be written."""
    if path.suffix.lower() not in (".mid", ".midi"):
        raise OutputError(f"{path}: the MIDI output must end in .mid or .midi")
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise OutputError(f"{path}: is a directory; give a file name")
    if not parent.is_dir():
        raise OutputError(f"{path}: cannot write there; the directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: cannot write there; the directory {parent} is not writable")
    if source is not None and source.exists() and path.exists() and os.path.samefile(source, path):
        raise OutputError(f"{path}: is the input file; give another output name")


def write_midi_temp(midi, path: Path) -> str:
    """Write ``midi`` to a new temporary file beside ``path`` (mode as umask allows) and return its
    name; the caller renames it over ``path`` (or removes it)."""
    path = Path(path)
    check_midi_output(path)
    parent = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=parent)
    except OSError as e:
        raise OutputError(f"{path}: cannot write there ({e})") from e
    try:
        with os.fdopen(fd, "wb") as f:
            midi.save(file=f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
    except OSError as e:
        os.unlink(tmp)
        raise OutputError(f"{path}: cannot write the MIDI file ({e})") from e
    return tmp


def write_midi_atomic(midi, path: Path) -> None:
    """Write ``midi`` to ``path`` so that it appears whole or not at all."""
    tmp = write_midi_temp(midi, path)
    try:
        os.replace(tmp, path)
    except OSError as e:
        raise OutputError(f"{path}: cannot write the MIDI file ({e})") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def generate_file(prime_path, output: Path | None, settings: PlaySettings, bars: int = 8, seed: int = 0,
                  model: str | Path | None = None, melody_channel: int | None = None, free_time: bool = False,
                  program: int = MELODY_PROGRAM, cc_map: dict | None = None):
    """Read ``prime_path``, generate, write ``output`` (if given). Returns (Generated, mido.MidiFile)."""
    if output is not None:
        output = Path(output)
        check_midi_output(output, Path(prime_path))
    source = read_midi_notes(prime_path)
    result = generate(source, MelodyModel(model), settings, bars=bars, seed=seed, melody_channel=melody_channel,
                      free_time=free_time, cc_map=cc_map)
    midi = combined_midi(result, program)
    if output is not None:
        write_midi_atomic(midi, output)
    return result, midi
