"""200 mutated MIDI files: each ends in a correct render or one clear error line; never a traceback or a hang."""

from __future__ import annotations

import signal
import struct

import numpy as np
import pytest
import soundfile

from liveart.cli import main

from .conftest import simple_song, write_midi

N_FILES = 200
SECONDS_PER_FILE = 30


def _tracks(data: bytes):
    """Offsets (start of data, length) of each MTrk chunk."""
    out, pos = [], 14
    while pos + 8 <= len(data):
        length = struct.unpack(">I", data[pos + 4 : pos + 8])[0]
        out.append((pos + 8, length))
        pos += 8 + length
    return out


def _vlq(value: int) -> bytes:
    parts = [value & 0x7F]
    value >>= 7
    while value:
        parts.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(parts))


def _insert_event(data: bytes, rng, event: bytes) -> bytes:
    tracks = _tracks(data)
    start, length = tracks[int(rng.integers(0, len(tracks)))]
    head = data[: start - 4] + struct.pack(">I", length + len(event))
    return head + event + data[start:]


def mutate(base: bytes, rng, kind: str) -> bytes:
    data = bytearray(base)
    if kind == "flip":
        for _ in range(int(rng.integers(1, 9))):
            data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
        return bytes(data)
    if kind == "truncate":
        return bytes(data[: int(rng.integers(0, len(data)))])
    if kind == "delta":  # an absurd delta time before a note (up to the largest a MIDI file can hold)
        delta = int(rng.choice([0x0FFFFFFF, 0x00FFFFFF, 10_000_000, 2_000_000]))
        return _insert_event(bytes(data), rng, _vlq(delta) + bytes([0x90, 60, 100]))
    if kind == "tempo":  # absurd tempos: 0, 1 us per beat, the largest 24-bit value
        value = int(rng.choice([0, 1, 2, 0xFFFFFF, 0x7FFFFF]))
        return _insert_event(bytes(data), rng, b"\x00\xff\x51\x03" + value.to_bytes(3, "big"))
    if kind == "header":
        field = int(rng.integers(0, 3))
        offset = (8, 10, 12)[field]
        data[offset : offset + 2] = int(rng.choice([0, 1, 2, 3, 0x7FFF, 0xFFFF, 0x8000, 0xE728])).to_bytes(2, "big")
        return bytes(data)
    if kind == "length":  # a chunk that claims to be much longer or shorter than it is
        start, _ = _tracks(bytes(data))[int(rng.integers(0, 3))]
        data[start - 4 : start] = int(rng.choice([0, 1, 7, 0x7FFFFFFF, 0xFFFFFFFF])).to_bytes(4, "big")
        return bytes(data)
    if kind == "garbage":
        return bytes(data[:14]) + rng.integers(0, 256, int(rng.integers(0, 400))).astype(np.uint8).tobytes()
    if kind == "status":  # running status and data bytes scrambled inside a track
        start, length = _tracks(bytes(data))[int(rng.integers(1, 3))]
        for _ in range(4):
            i = start + int(rng.integers(0, max(1, length)))
            if i < len(data):
                data[i] = int(rng.choice([0x80, 0xF0, 0xF7, 0xFF, 0xC0, 0x7F, 0x00]))
        return bytes(data)
    raise AssertionError(kind)


KINDS = ["flip"] * 70 + ["truncate"] * 35 + ["delta"] * 25 + ["tempo"] * 20 + ["header"] * 15 + \
        ["length"] * 15 + ["garbage"] * 10 + ["status"] * 10


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout


@pytest.fixture(scope="module")
def base_midi(tmp_path_factory):
    path = write_midi(tmp_path_factory.mktemp("base") / "base.mid", simple_song(6))
    return path.read_bytes()


def test_mutated_midi_files_render_or_fail_cleanly(tmp_path, base_midi, capsys):
    assert len(KINDS) == N_FILES
    rng = np.random.default_rng(2026)
    outcomes = {"rendered": 0, "error": 0}
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        for i, kind in enumerate(KINDS):
            src = tmp_path / f"m{i:03d}-{kind}.mid"
            src.write_bytes(mutate(base_midi, rng, kind))
            out = tmp_path / f"m{i:03d}.wav"
            signal.alarm(SECONDS_PER_FILE)
            try:
                code = main(["render", str(src), "-o", str(out), "-q", "--max-minutes", "2"])
            except _Timeout:
                pytest.fail(f"{src.name}: still running after {SECONDS_PER_FILE} s")
            finally:
                signal.alarm(0)
            err = capsys.readouterr().err
            if code == 0:
                audio, sr = soundfile.read(out)
                assert sr == 48000 and audio.ndim == 2 and len(audio) > 0, src.name
                assert np.all(np.isfinite(audio)) and np.max(np.abs(audio)) <= 1.0, src.name
                outcomes["rendered"] += 1
                out.unlink()
            else:
                assert code == 1, f"{src.name}: exit {code}: {err}"
                assert err.startswith("liveart: error: ") and err.count("\n") == 1, f"{src.name}: {err!r}"
                assert str(src) in err, f"{src.name}: the message must name the file: {err!r}"
                assert not out.exists()
                outcomes["error"] += 1
            assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [], "temporary files left"
    finally:
        signal.signal(signal.SIGALRM, previous)
    # Both outcomes must occur, or the mutations are not testing anything.
    assert outcomes["rendered"] >= 20 and outcomes["error"] >= 20, outcomes
