"""Takes: exact frames through mido and the renderer's reader, crash safety, names, meta."""

from __future__ import annotations

import os
import random
import signal
import struct
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import mido
import pytest

from liveart import events as ev
from liveart.errors import MidiFileError, OutputError
from liveart.hosts import takes
from liveart.hosts.takes import TakeWriter, read_take_meta, take_ticks
from liveart.midi.files import read_midi_file

REPO = Path(__file__).resolve().parents[1]


def mido_events(path, sample_rate):
    """(tick, message bytes) of the take's channel messages as mido reads them; checks tick == frame."""
    midi = mido.MidiFile(str(path))
    assert midi.type == 0 and len(midi.tracks) == 1
    tempos = [m.tempo for m in midi.tracks[0] if m.type == "set_tempo"]
    assert len(tempos) == 1 and midi.ticks_per_beat * 1_000_000 == sample_rate * tempos[0]
    tick, out = 0, []
    for msg in midi.tracks[0]:
        tick += msg.time
        if not msg.is_meta:
            out.append((tick, bytes(msg.bytes())))
    return out


def strict_events(path):
    """A strict reader: (events before the first End-of-Track, all events) as (tick, bytes).

    Checks what mido forgives: the header, a chunk length that ends on an event boundary, deltas of
    at most 4 bytes, no running status, and a track whose last event is End-of-Track."""
    data = Path(path).read_bytes()
    assert data[:8] == b"MThd\x00\x00\x00\x06"
    fmt, ntracks, division = struct.unpack(">HHH", data[8:14])
    assert (fmt, ntracks) == (0, 1) and 0 < division < 0x8000
    assert data[14:18] == b"MTrk"
    size = struct.unpack(">L", data[18:22])[0]
    track = data[22:22 + size]
    assert len(track) == size
    pos, tick, events, first, last_was_eot = 0, 0, [], None, False

    def vlq():
        nonlocal pos
        value = 0
        for n in range(4):
            byte = track[pos]
            pos += 1
            value = (value << 7) | (byte & 0x7F)
            if byte < 0x80:
                return value
        raise AssertionError("a variable-length quantity over 4 bytes")

    while pos < size:
        tick += vlq()
        status = track[pos]
        assert status >= 0x80, "running status"
        if status == 0xFF:
            meta_type = track[pos + 1]
            pos += 2
            length = vlq()
            pos += length
            last_was_eot = meta_type == 0x2F
            if last_was_eot:
                assert length == 0
                if first is None:
                    first = list(events)
        else:
            assert 0x80 <= status < 0xF0
            n = 2 if status & 0xF0 in (0xC0, 0xD0) else 3
            events.append((tick, track[pos:pos + n]))
            pos += n
            last_was_eot = False
    assert pos == size, "the chunk length falls inside an event"
    assert last_was_eot, "the track does not end with End-of-Track"
    return first, events


def engine_events(raw, sample_rate):
    """What liveart.midi.files should make of (frame, bytes) channel messages."""
    out = []
    for frame, data in raw:
        kind, channel = data[0] & 0xF0, data[0] & 0x0F
        if kind == 0x90 and data[2] > 0:
            out.append(ev.Event(frame, ev.NOTE_ON, channel, data[1], data[2]))
        elif kind in (0x80, 0x90):
            out.append(ev.Event(frame, ev.NOTE_OFF, channel, data[1], 0))
        elif kind == 0xB0:
            out.append(ev.Event(frame, ev.CONTROL_CHANGE, channel, data[1], data[2]))
        elif kind == 0xE0:
            out.append(ev.Event(frame, ev.PITCH_BEND, channel, (data[1] | data[2] << 7) - 8192, 0))
        elif kind == 0xC0:
            out.append(ev.Event(frame, ev.PROGRAM_CHANGE, channel, data[1], 0))
    return out


def reader_events(path, sample_rate):
    return [e for e in read_midi_file(path).to_events(sample_rate) if e.kind != ev.TEMPO]


def performance(sample_rate):
    """(frame, bytes) of a short performance with every kind of channel message, in time order;
    frames are odd numbers of samples, far from beat boundaries, up to an hour and a bit."""
    hour = 3600 * sample_rate
    return [
        (0, bytes([0xC0, 73])),
        (0, bytes([0xB0, 7, 100])),
        (1, bytes([0x90, 60, 100])),
        (1, bytes([0x91, 64, 90])),
        (7, bytes([0xE0, 0x00, 0x40])),
        (4801, bytes([0xE0, 0x7F, 0x7F])),
        (4801, bytes([0xB1, 64, 127])),
        (9999, bytes([0x80, 60, 0])),
        (10_007, bytes([0xA1, 64, 33])),
        (10_008, bytes([0xD1, 20])),
        (sample_rate - 1, bytes([0x91, 64, 0])),
        (sample_rate + 3, bytes([0xE5, 0x01, 0x00])),
        (sample_rate + 3, bytes([0xC9, 0])),
        (sample_rate + 3, bytes([0x99, 36, 127])),
        (hour + 1, bytes([0x89, 36, 64])),
        (hour + 12_345, bytes([0x9F, 127, 1])),
        (hour + 12_346, bytes([0x8F, 127, 0])),
    ]


@pytest.mark.parametrize("sample_rate", [48000, 44100, 96000])
def test_round_trip_exact_frames(tmp_path, sample_rate):
    played = performance(sample_rate)
    shuffled = list(enumerate(played))
    random.Random(sample_rate).shuffle(shuffled)
    with TakeWriter(tmp_path, sample_rate, {"patch": "default"}) as writer:
        # out of order within the window, added as bytes, tuples and lists, two flushes on the way
        for i, (frame, data) in shuffled:
            writer.add(frame, data if i % 3 == 0 else tuple(data) if i % 3 == 1 else list(data))
        writer.flush(5000)
        writer.flush(sample_rate)
    assert writer.events_written == len(played) and writer.late_events == 0 and writer.skipped == 0
    # ties keep the order they were added in, and shuffling changed that order for some
    expected = sorted(played, key=lambda e: (e[0], [p for i, p in shuffled].index(e)))
    assert mido_events(writer.path, sample_rate) == expected
    assert strict_events(writer.path)[1] == expected
    assert reader_events(writer.path, sample_rate) == engine_events(expected, sample_rate)


def test_long_silence_is_bridged(tmp_path):
    """A gap over the largest MIDI delta (2**28 - 1 ticks, 46 min at 96 kHz) is split, not wrapped."""
    played = [(5, bytes([0x90, 60, 100])), (700_000_011, bytes([0x80, 60, 0])), (700_000_012, bytes([0x90, 62, 1]))]
    with TakeWriter(tmp_path, 96000, {}) as writer:
        for frame, data in played:
            writer.add(frame, data)
    assert strict_events(writer.path)[1] == played
    assert mido_events(writer.path, 96000) == played
    assert reader_events(writer.path, 96000) == engine_events(played, 96000)


def test_end_frame_sets_the_length(tmp_path):
    with TakeWriter(tmp_path, 44100, {}) as writer:
        writer.add(100, (0x90, 60, 100))
        writer.add(200, (0x80, 60, 0))
        writer.close(end_frame=441_000)
        writer.close(end_frame=900_000)  # idempotent
    midi = mido.MidiFile(str(writer.path))
    assert sum(m.time for m in midi.tracks[0]) == 441_000
    assert read_midi_file(writer.path).duration_seconds == pytest.approx(10.0, abs=1e-9)
    strict_events(writer.path)


def test_out_of_order_late_and_skipped(tmp_path):
    writer = TakeWriter(tmp_path, 48000, {})
    a, b, c, d = (0x90, 60, 1), (0x90, 61, 2), (0x90, 62, 3), (0x90, 63, 4)
    writer.add(30, a)
    writer.add(10, b)
    writer.add(20, c)
    writer.add(10, d)
    writer.flush(25)
    assert mido_events(writer.path, 48000) == [(10, bytes(b)), (10, bytes(d)), (20, bytes(c))]
    late = (0xB0, 1, 5)
    writer.add(24, late)  # before the flushed frame: placed at 25
    writer.add(-3, (0xB0, 2, 6))  # before the take: placed at 25 too
    writer.add(25, (0xB0, 3, 7))  # not late
    writer.flush(20)  # going back does nothing
    for bad in [(0xF8,), (0xF0, 1, 2, 0xF7), (0xFF,), (0x90, 200, 1), (0x90, 60), (0x90, 60, 1, 2), (0x40, 1, 2),
                b"", (0xC0, 1, 2), (0xC0, 300), "no", None, [0x90, -1, 5], 3]:
        writer.add(26, bad)
    writer.close()
    assert writer.late_events == 2
    assert writer.skipped == 14
    assert writer.events_written == 7
    assert mido_events(writer.path, 48000) == [
        (10, bytes(b)), (10, bytes(d)), (20, bytes(c)),
        (25, bytes(late)), (25, bytes([0xB0, 2, 6])), (25, bytes([0xB0, 3, 7])), (30, bytes(a))]
    writer.add(40, a)  # after close: dropped and counted, never written
    assert writer.skipped == 15
    with pytest.raises(ValueError):
        writer.flush(100)


def test_readable_after_every_flush(tmp_path):
    writer = TakeWriter(tmp_path, 48000, {"bar_frames": 96000})
    written = []
    for bar in range(12):
        for i in range(bar % 4):  # some bars add nothing
            frame = bar * 96000 + i * 997
            data = bytes([0x90 + i, 40 + bar, 1 + i]) if i % 2 == 0 else bytes([0xB0 + i, 74, bar])
            writer.add(frame, data)
            written.append((frame, data))
        writer.flush((bar + 1) * 96000)
        assert mido_events(writer.path, 48000) == written
        before_eot, everything = strict_events(writer.path)
        assert before_eot == everything == written
        if any(d[0] & 0xF0 == 0x90 for _, d in written):
            assert reader_events(writer.path, 48000) == engine_events(written, 48000)
        assert read_take_meta(writer.path) == {"bar_frames": 96000}
    writer.close()
    assert mido_events(writer.path, 48000) == written


class Crash(Exception):
    pass


@pytest.mark.parametrize("step", [1, 2, 3])
def test_killed_inside_a_flush(tmp_path, step):
    """Stop the writer after each write step of a flush: every state is a whole MIDI file holding
    the last flush or this one, and a reader that stops at the first End-of-Track sees a prefix."""
    first = [(100, bytes([0x90, 60, 100])), (200, bytes([0xB0, 1, 64]))]
    second = [(300, bytes([0x80, 60, 0])), (300, bytes([0xE0, 0, 0x50])), (400, bytes([0xC0, 5]))]
    writer = TakeWriter(tmp_path, 48000, {"step": step})
    for frame, data in first:
        writer.add(frame, data)
    writer.flush(250)

    def crash(at):
        if at == step:
            raise Crash

    writer._after_step = crash
    for frame, data in second:
        writer.add(frame, data)
    with pytest.raises(Crash):
        writer.flush(1000)
    os.close(writer._fd)  # the process is gone: nothing more is written

    on_disk = first if step == 1 else first + second
    assert mido_events(writer.path, 48000) == on_disk
    assert reader_events(writer.path, 48000) == engine_events(on_disk, 48000)
    before_eot, everything = strict_events(writer.path)
    assert everything == on_disk
    assert before_eot == (on_disk if step == 3 else first)
    assert read_take_meta(writer.path) == {"step": step}


def test_failed_flush_is_written_by_the_next(tmp_path):
    """A write error at step 1 (disk full) leaves the file as it was and keeps the events."""
    writer = TakeWriter(tmp_path, 48000, {})
    writer.add(10, (0x90, 60, 100))
    writer.flush(20)

    def disk_full(at):
        if at == 1:
            raise OSError(28, "No space left on device")

    writer._after_step = disk_full
    writer.add(30, (0x80, 60, 0))
    with pytest.raises(OutputError, match="No space left") as info:
        writer.flush(40)
    assert "\n" not in str(info.value)
    assert writer.events_written == 1
    writer._after_step = None
    writer.add(35, (0x90, 62, 1))
    writer.close()
    expected = [(10, bytes([0x90, 60, 100])), (30, bytes([0x80, 60, 0])), (35, bytes([0x90, 62, 1]))]
    assert strict_events(writer.path) == (expected, expected)
    assert writer.events_written == 3 and writer.late_events == 0


CHILD = """
import sys, time
from liveart.hosts.takes import TakeWriter
writer = TakeWriter(sys.argv[1], 48000, {"child": True}, name="killed")
print(writer.path, flush=True)
k = 0
while True:
    for _ in range(20):
        writer.add(k * 100, (0x90 | k % 16, 36 + k % 60, 1 + k % 127))
        k += 1
    writer.flush(k * 100)
    if k % 40 == 0:
        time.sleep(0.02)
"""


def child_event(k):
    return (k * 100, bytes([0x90 | k % 16, 36 + k % 60, 1 + k % 127]))


@pytest.mark.parametrize("delay_seconds", [0.05, 0.13, 0.21])
def test_kill_9_leaves_a_readable_prefix(tmp_path, delay_seconds):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], stdout=subprocess.PIPE, cwd=REPO, env=env)
    try:
        path = Path(child.stdout.readline().decode().strip())
        start_bytes = path.stat().st_size
        deadline = time.monotonic() + 10
        while path.stat().st_size < start_bytes + 2000 and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(delay_seconds)
        assert child.poll() is None
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    found = mido_events(path, 48000)
    assert len(found) >= 100
    assert found == [child_event(k) for k in range(len(found))]
    assert len(found) % 20 == 0  # whole flushes only
    before_eot, everything = strict_events(path)
    assert everything == found and before_eot == found[:len(before_eot)]
    assert reader_events(path, 48000) == engine_events(found, 48000)
    assert read_take_meta(path) == {"child": True}
    assert [p.name for p in tmp_path.iterdir()] == ["killed.mid"]  # no temporary file left


def test_flush_costs_only_the_new_events(tmp_path, monkeypatch):
    writer = TakeWriter(tmp_path, 48000, {})
    for k in range(60_000):
        writer.add(k * 7, (0x90, k % 128, 1 + k % 127))
        if k % 1000 == 999:
            writer.flush(k * 7 + 1)
    written = []
    original = takes._pwrite

    def counting(fd, data, offset):
        written.append(len(data))
        original(fd, data, offset)

    monkeypatch.setattr(takes, "_pwrite", counting)
    writer.add(60_000 * 7, (0x80, 1, 0))
    writer.flush(60_000 * 7 + 1)
    assert sum(written) <= 4 + 3 + 4 + 4 + 1  # delta, message, End-of-Track, length, one byte
    writer.close()
    assert len(strict_events(writer.path)[1]) == 60_001


def test_meta_round_trip(tmp_path):
    meta = {
        "patch": '[audio]\nsample_rate = 48000\nname = "Flöte — «ß» 音"\n\ttab\\back\u2028\x00',
        "partner": {"mode": "call_response", "temperature": 0.9, "seed": 7, "channels": [1, 2]},
        "empty": None,
    }
    with TakeWriter(tmp_path, 48000, meta) as writer:
        writer.add(0, (0x90, 60, 100))
    assert read_take_meta(writer.path) == meta
    texts = [m.text for m in mido.MidiFile(str(writer.path)).tracks[0] if m.type == "text"]
    assert texts[0].startswith("liveart-take:") and texts[0].isascii()
    names = [m.name for m in mido.MidiFile(str(writer.path)).tracks[0] if m.type == "track_name"]
    assert names == ["liveart take"]
    with TakeWriter(tmp_path, 48000, {}) as empty:
        pass
    assert read_take_meta(empty.path) == {}


def test_read_take_meta_of_other_files(tmp_path):
    midi = mido.MidiFile(type=1)
    track = midi.add_track()
    track.append(mido.MetaMessage("text", text="liveart-take is just words here", time=0))
    track.append(mido.Message("note_on", note=60, velocity=100, time=0))
    track.append(mido.MetaMessage("text", text='liveart-take:{"later": 1}', time=10))  # not at tick 0
    midi.save(str(tmp_path / "plain.mid"))
    assert read_take_meta(tmp_path / "plain.mid") is None
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(MidiFileError):
        read_take_meta(tmp_path / "notes.txt")
    with pytest.raises(MidiFileError):
        read_take_meta(tmp_path / "missing.mid")
    # a take saved again by mido is still a take
    with TakeWriter(tmp_path, 48000, {"x": 1}) as writer:
        writer.add(5, (0x90, 60, 100))
    again = mido.MidiFile(str(writer.path))
    again.save(str(tmp_path / "again.mid"))
    assert read_take_meta(tmp_path / "again.mid") == {"x": 1}


def test_unwritable_directory(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the takes directory should go")
    for directory in (blocker, blocker / "takes"):
        with pytest.raises(OutputError) as info:
            TakeWriter(directory, 48000, {})
        message = str(info.value)
        assert "\n" not in message and str(blocker) in message
    with pytest.raises(OutputError):
        TakeWriter(tmp_path, 48000, {}, name="../escape")


def test_creates_directories_and_never_overwrites(tmp_path, monkeypatch):
    monkeypatch.setattr(takes, "_now", lambda: datetime(2024, 1, 2, 3, 4, 5))
    directory = tmp_path / "deep" / "takes"
    first = TakeWriter(directory, 48000, {})
    assert first.path == directory / "take-20240102-030405.mid"
    (directory / "take-20240102-030405-2.mid").write_bytes(b"precious")
    second = TakeWriter(directory, 48000, {})  # same second
    assert second.path == directory / "take-20240102-030405-3.mid"
    for w in (first, second):
        w.add(1, (0x90, 60, 1))
        w.close()
    assert (directory / "take-20240102-030405-2.mid").read_bytes() == b"precious"
    assert mido_events(first.path, 48000) == mido_events(second.path, 48000) == [(1, bytes([0x90, 60, 1]))]
    named = [TakeWriter(directory, 48000, {}, name="solo") for _ in range(2)]
    assert [w.path.name for w in named] == ["solo.mid", "solo-2.mid"]
    for w in named:
        w.close()
    assert sorted(p.name for p in directory.iterdir()) == [
        "solo-2.mid", "solo.mid", "take-20240102-030405-2.mid", "take-20240102-030405-3.mid",
        "take-20240102-030405.mid"]


@pytest.mark.parametrize("sample_rate", [8000, 16000, 22050, 32000, 44100, 48000, 88200, 96000, 176400, 192000])
def test_take_ticks_one_tick_per_frame(sample_rate):
    ticks_per_beat, tempo_us = take_ticks(sample_rate)
    assert 0 < ticks_per_beat <= 32767 and 0 < tempo_us <= 0xFFFFFF
    assert ticks_per_beat * 1_000_000 == sample_rate * tempo_us


def test_take_ticks_choices_and_refusals():
    assert take_ticks(48000) == (24000, 500000)
    assert take_ticks(44100) == (22050, 500000)
    assert take_ticks(96000) == (24000, 250000)
    for bad in (7, 1e9, 44101, 48000.5, 0, -48000, "48000", True):
        with pytest.raises(ValueError):
            take_ticks(bad)
