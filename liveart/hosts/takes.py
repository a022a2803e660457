"""Takes: a live performance's MIDI, recorded crash-safe, timed exactly in audio frames.

The live host hands a :class:`TakeWriter` every MIDI message it plays (incoming and generated),
stamped with the absolute audio frame at which the engine plays it, and calls
:meth:`TakeWriter.flush` at least once a bar. ``liveart render takes/X.mid`` re-renders the take
through the same engine, frame for frame.

Format
------
A Standard MIDI File of type 0 (one ``MTrk`` chunk) whose tick is one audio frame:
:func:`take_ticks` picks ``ticks_per_beat`` (at most 32767) and a tempo in whole microseconds per
beat with ``ticks_per_beat * 1e6 / tempo_us == sample_rate`` exactly, preferring the MIDI default
tempo (500000) so that even a reader that ignores the tempo gets the timing right. At tick 0 the
track holds the tempo, the track name ``liveart take`` and the take's meta dict as JSON
(``ensure_ascii``, so any charset decodes it) in a *text* meta event (``FF 01``) whose text starts
with ``liveart-take:``; :func:`read_take_meta` reads it back. Channel messages are written whole
(no running status). A gap longer than the largest delta a MIDI file can hold (2**28 - 1 ticks,
46 minutes at 96 kHz) is bridged with empty text events.

Crash safety
------------
The file is always ``MThd`` + one ``MTrk`` whose declared length ends on an event boundary, and
it is written only with ``os.pwrite`` on an unbuffered descriptor, so every completed call is in
the kernel's page cache and survives ``kill -9`` of the process (not a power cut: :meth:`close`
fsyncs once). A new take is written whole to a hidden temporary file and hard-linked into place
(``link`` fails rather than overwrite), so its name never shows an empty or partial file.

While open, the track ends with an End-of-Track event ``00 FF 2F 00`` (delta 0, so it sits at the
last event's tick, and the first new event's delta counts from there). One flush appends events B:

1. ``pwrite(B + 00 FF 2F 00)`` just past the current End-of-Track, beyond the declared length.
   The file is unchanged as far as any reader is concerned (readers skip bytes past the chunk).
2. ``pwrite`` the new chunk length (4 bytes at offset 18, inside the first page). The track now
   reads: old events, old End-of-Track, B, new End-of-Track. A reader that stops at the first
   End-of-Track (and skips to the declared end) sees the previous flush; mido and readers that go
   on to the declared end see everything (mido drops the inner End-of-Track).
3. ``pwrite`` one byte, 0x2F -> 0x01, turning the old ``00 FF 2F 00`` into ``00 FF 01 00``, an
   empty text event (a no-op at the same tick). The track is whole again.

This reverses the obvious order (no-op the old End-of-Track, then grow the length): that order
passes through a track with no End-of-Track at all, which strict readers refuse, whereas here
every state ends with one and the worst a reader can see is the previous flush. Steps 2 and 3
write within one page (the length) or a single byte, which a killed process cannot leave
half-done; a kill during step 1 leaves only ignored bytes past the chunk. Disk-full can only fail
step 1 (the others overwrite bytes already on disk), so a failed flush keeps its events for the
next one. A flush costs O(new events): nothing already written is read or rewritten. A reader
racing the writer may catch the 4-byte length mid-update and should retry; a crashed file needs
no repair.

Layers: :class:`TakeWriter` (``add`` / ``flush`` / ``close``), :func:`read_take_meta`, and the raw
step :func:`take_ticks`.
"""

from __future__ import annotations

import bisect
import json
import math
import operator
import os
import struct
import tempfile
import threading
from datetime import datetime
from pathlib import Path

from ..errors import MidiFileError, OutputError
from ..midi.messages import DATA_BYTES
from ..midi.messages import channel_message as _channel_message

MIN_SAMPLE_RATE = 1000  # Hz: below, not audio
MAX_SAMPLE_RATE = 768_000  # Hz: above any sound card
MAX_TICKS_PER_BEAT = 0x7FFF  # 15 bits: the top bit of the header's division means SMPTE timing
MAX_TEMPO_US = 0xFFFFFF  # the set-tempo meta event holds 3 bytes
DEFAULT_TEMPO_US = 500_000  # what a reader assumes without a tempo event

TRACK_NAME = "liveart take"
META_PREFIX = "liveart-take:"
MAX_META_BYTES = 900_000  # mido refuses meta events over 1,000,000 bytes
META_SCAN_BYTES = MAX_META_BYTES + 65536  # read_take_meta reads no more of a track than this
MAX_DELTA_TICKS = 0x0FFFFFFF  # the largest 4-byte variable-length quantity
MAX_CHUNK_BYTES = 0xFFFFFFFF
MAX_NAME_TRIES = 1000

HEADER_BYTES = 14  # MThd, length 6, format, tracks, division
LENGTH_OFFSET = HEADER_BYTES + 4  # the MTrk chunk's length field
TRACK_START = HEADER_BYTES + 8

END_OF_TRACK = b"\x00\xff\x2f\x00"  # delta 0, End-of-Track
NO_OP = b"\xff\x01\x00"  # an empty text meta event (after its delta)
TEXT_TYPE = 0x01
EOT_TYPE = 0x2F



def take_ticks(sample_rate: int) -> tuple[int, int]:
    """(ticks_per_beat, tempo in microseconds per beat) whose tick lasts exactly one frame.

    ``sample_rate`` in Hz. Tempos 500000 * 2**n are tried nearest to 500000 first (48000 Hz →
    (24000, 500000), 96000 Hz → (24000, 250000)), then the exact pair with the most ticks per beat.
    Raises ValueError for a rate outside MIN_SAMPLE_RATE..MAX_SAMPLE_RATE or with no exact pair.
    """
    try:
        rate = int(sample_rate)
        exact = rate == sample_rate and not isinstance(sample_rate, bool)
    except (TypeError, ValueError, OverflowError):
        exact = False
    if not exact:
        raise ValueError(f"sample rate {sample_rate!r}: give a whole number of Hz")
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise ValueError(f"sample rate {rate} Hz: takes record {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz")
    for n in (0, -1, 1, -2, 2, -3, 3, -4, 4, -5, 5):
        tempo_us = DEFAULT_TEMPO_US * 2 ** n if n >= 0 else DEFAULT_TEMPO_US // 2 ** -n
        if n < 0 and DEFAULT_TEMPO_US % 2 ** -n:
            continue
        if tempo_us <= MAX_TEMPO_US and (rate * tempo_us) % 1_000_000 == 0:
            ticks_per_beat = rate * tempo_us // 1_000_000
            if ticks_per_beat <= MAX_TICKS_PER_BEAT:
                return ticks_per_beat, tempo_us
    # Every exact pair is a multiple of the smallest one.
    g = math.gcd(rate, 1_000_000)
    base_ticks, base_tempo = rate // g, 1_000_000 // g
    k = min(MAX_TICKS_PER_BEAT // base_ticks, MAX_TEMPO_US // base_tempo)
    if k < 1:
        raise ValueError(f"sample rate {rate} Hz: no MIDI resolution makes one tick exactly one frame "
                         "(ticks per beat would exceed 32767); use a common rate such as 48000")
    return base_ticks * k, base_tempo * k


def _vlq(value: int) -> bytes:
    """A MIDI variable-length quantity (0..MAX_DELTA_TICKS)."""
    if value < 0:
        raise ValueError(f"negative delta {value}")  # a bug, not a take: never loop on it
    out = bytearray([value & 0x7F])
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


def _delta(ticks: int) -> bytes:
    """The delta before an event, with empty text events bridging gaps over MAX_DELTA_TICKS."""
    if ticks <= MAX_DELTA_TICKS:
        return _vlq(ticks)
    out = bytearray()
    while ticks > MAX_DELTA_TICKS:
        out += _vlq(MAX_DELTA_TICKS) + NO_OP
        ticks -= MAX_DELTA_TICKS
    return bytes(out + _vlq(ticks))


def _meta_event(meta_type: int, data: bytes) -> bytes:
    return b"\x00\xff" + bytes([meta_type]) + _vlq(len(data)) + data


def _pwrite(fd: int, data: bytes, offset: int) -> None:
    """Write all of ``data`` at byte ``offset``."""
    view = memoryview(data)
    while view:
        if hasattr(os, "pwrite"):
            done = os.pwrite(fd, view, offset)
        else:  # no pwrite (Windows): callers hold the writer's lock, so seek + write is safe
            os.lseek(fd, offset, os.SEEK_SET)
            done = os.write(fd, view)
        if done <= 0:
            raise OSError(f"wrote nothing at byte {offset}")
        view = view[done:]
        offset += done


def _now() -> datetime:
    return datetime.now()


class TakeWriter:
    """Records channel MIDI messages at audio frames to a new take file, crash-safe.

    ``directory`` is created if needed; the file is ``take-YYYYmmdd-HHMMSS.mid`` (local time), or
    ``name + ".mid"``, with ``-2``, ``-3``, ... added rather than overwrite anything. ``sample_rate``
    in Hz sets the tick (one frame); ``meta`` (a JSON-able dict: patch, settings, ...) is stored in
    the file. Raises OutputError (one line) when the take cannot be written.

    ``add`` may be called from one thread while another flushes. Health counters: ``events_written``
    (channel messages on disk), ``late_events`` (added before the flushed frame, moved to it),
    ``skipped`` (not channel messages, malformed, or added after close).
    """

    # Test hook: called with 1, 2, 3 after each write step of a flush (see the module docstring).
    _after_step = None

    def __init__(self, directory: str | Path, sample_rate: int, meta: dict, name: str | None = None):
        self.ticks_per_beat, self.tempo_us = take_ticks(sample_rate)
        self.sample_rate = int(sample_rate)
        if not isinstance(meta, dict):
            raise TypeError(f"meta must be a dict, not {type(meta).__name__}")
        try:
            meta_json = json.dumps(meta, ensure_ascii=True, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ValueError(f"meta cannot be written as JSON ({e})") from e
        meta_text = (META_PREFIX + meta_json).encode("ascii")
        if len(meta_text) > MAX_META_BYTES:
            raise ValueError(f"meta is {len(meta_text)} bytes as JSON; a take holds at most {MAX_META_BYTES}")
        if name is not None and (not name or name in (".", "..") or "/" in name or os.sep in name
                                 or "\0" in name):
            raise OutputError(f"take name {name!r}: give a plain file name without a directory")

        self.events_written = 0
        self.late_events = 0
        self.skipped = 0
        self._pending: list[tuple[int, int, bytes]] = []  # (frame, order added, message)
        self._order = 0
        self._flushed_frame = 0  # every event before this frame is on disk; later adds are clamped to it
        self._last_tick = 0  # the tick of the track's End-of-Track (its last event)
        self._lock = threading.Lock()  # guards the pending events and counters
        self._io_lock = threading.Lock()  # one flush at a time
        self._closed = False

        tracks = (_meta_event(0x51, self.tempo_us.to_bytes(3, "big"))
                  + _meta_event(0x03, TRACK_NAME.encode("ascii"))
                  + _meta_event(TEXT_TYPE, meta_text)
                  + END_OF_TRACK)
        header = b"MThd" + struct.pack(">LHHH", 6, 0, 1, self.ticks_per_beat)
        initial = header + b"MTrk" + struct.pack(">L", len(tracks)) + tracks
        self._end = len(initial)  # bytes of the file that belong to the track: where the next flush writes
        self._eot_type_offset = self._end - 2  # the 0x2F byte of the track's End-of-Track
        self._track_bytes = len(tracks)
        self._fd, self.path = self._create(Path(directory), name, initial)

    def _create(self, directory: Path, name: str | None, initial: bytes) -> tuple[int, Path]:
        """Make the directory, then a new file holding ``initial``; returns (fd, path)."""
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"{directory}: cannot make the takes directory ({e.strerror or e})") from e
        if not directory.is_dir():
            raise OutputError(f"{directory}: not a directory; give a directory for takes")
        stem = name if name is not None else _now().strftime("take-%Y%m%d-%H%M%S")
        if stem.lower().endswith((".mid", ".midi")):
            stem = stem.rsplit(".", 1)[0]
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=".part", dir=directory)
        except OSError as e:
            raise OutputError(f"{directory}: cannot write a take there ({e.strerror or e})") from e
        try:
            try:
                _pwrite(fd, initial, 0)
                umask = os.umask(0)
                os.umask(umask)
                os.fchmod(fd, 0o666 & ~umask)
            except OSError as e:
                raise OutputError(f"{directory}: cannot write a take there ({e.strerror or e})") from e
            for i in range(1, MAX_NAME_TRIES + 1):
                path = directory / (f"{stem}.mid" if i == 1 else f"{stem}-{i}.mid")
                try:
                    os.link(tmp, path)  # appears whole, and never replaces an existing file
                    return fd, path
                except FileExistsError:
                    continue
                except OSError:  # a file system without hard links: create in place instead
                    return self._create_in_place(path, initial, fd)
            raise OutputError(f"{directory}: {stem}.mid and {MAX_NAME_TRIES - 1} numbered takes exist; "
                              "clear some away or give another name")
        except BaseException:
            os.close(fd)
            raise
        finally:
            try:
                os.unlink(tmp)
            except OSError:
                pass

    def _create_in_place(self, path: Path, initial: bytes, tmp_fd: int) -> tuple[int, Path]:
        stem, directory = path.stem, path.parent
        for i in range(1, MAX_NAME_TRIES + 1):
            candidate = path if i == 1 else directory / f"{stem}-{i}.mid"
            try:
                fd = os.open(candidate, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                continue
            except OSError as e:
                raise OutputError(f"{candidate}: cannot write the take ({e.strerror or e})") from e
            try:
                _pwrite(fd, initial, 0)
            except OSError as e:
                os.close(fd)
                raise OutputError(f"{candidate}: cannot write the take ({e.strerror or e})") from e
            os.close(tmp_fd)
            return fd, candidate
        raise OutputError(f"{directory}: {path.name} and {MAX_NAME_TRIES - 1} numbered takes exist")

    def add(self, frame: int, message: bytes | tuple[int, ...] | list[int]) -> None:
        """Record one channel message (status 0x80-0xEF + its data bytes) at absolute audio ``frame``.

        Frame 0 is the start of the take. Events may come out of order; one before the flushed frame
        is moved to it (``late_events``). System messages (0xF0-0xFF), malformed messages and adds
        after close are counted in ``skipped`` and dropped.
        """
        frame = operator.index(frame)
        data = _channel_message(message)
        with self._lock:
            if data is None or self._closed:
                self.skipped += 1
                return
            if frame < self._flushed_frame:
                frame = self._flushed_frame
                self.late_events += 1
            self._pending.append((frame, self._order, data))
            self._order += 1

    def flush(self, until_frame: int) -> None:
        """Write every event before ``until_frame`` (frames) to disk, in (frame, order added) order.

        When it returns, the file is a complete Standard MIDI File holding them (in the page cache:
        safe from a killed process). Later adds before ``until_frame`` are moved to it.
        Raises OutputError if the disk refuses; the events are then kept for the next flush, and
        the flushed frame stays where it was.
        """
        until_frame = operator.index(until_frame)
        with self._io_lock:
            if self._closed:
                raise ValueError(f"{self.path}: the take is closed")
            self._flush(until_frame)

    def _flush(self, until_frame: int | None) -> None:
        """Write the events before ``until_frame`` (all if None); the caller holds the io lock."""
        with self._lock:
            if until_frame is not None and until_frame < self._flushed_frame:
                return
            flushed_frame = self._flushed_frame
            self._pending.sort()
            if until_frame is None:
                batch, self._pending = self._pending, []
                if batch:
                    self._flushed_frame = max(self._flushed_frame, batch[-1][0] + 1)
            else:
                split = bisect.bisect_left(self._pending, (until_frame,))
                batch, self._pending = self._pending[:split], self._pending[split:]
                self._flushed_frame = until_frame
        if not batch:
            return
        out = bytearray()
        tick = self._last_tick
        for frame, _, data in batch:
            out += _delta(frame - tick)
            out += data
            tick = frame
        track_bytes = self._track_bytes
        try:
            self._append(bytes(out), tick, 0)
        except BaseException:
            if self._track_bytes == track_bytes:  # not committed: keep them for the next flush
                with self._lock:
                    self._pending[:0] = batch  # still before every later event
                    self._flushed_frame = flushed_frame
            else:
                with self._lock:
                    self.events_written += len(batch)
            raise
        with self._lock:
            self.events_written += len(batch)

    def _append(self, events: bytes, last_tick: int, eot_delta: int) -> None:
        """The three-step append of the module docstring: ``events`` (ending at ``last_tick``), then
        an End-of-Track ``eot_delta`` ticks later."""
        eot = _delta(eot_delta) + b"\xff\x2f\x00"
        track_bytes = self._track_bytes + len(events) + len(eot)
        if track_bytes > MAX_CHUNK_BYTES:
            raise OutputError(f"{self.path}: the take has reached the 4 GiB a MIDI track can hold; start a new one")
        try:
            _pwrite(self._fd, events + eot, self._end)
            self._step(1)
            _pwrite(self._fd, struct.pack(">L", track_bytes), LENGTH_OFFSET)
        except OSError as e:
            raise OutputError(f"{self.path}: cannot write the take ({e.strerror or e})") from e
        old_eot, self._eot_type_offset = self._eot_type_offset, self._end + len(events) + len(eot) - 2
        self._end += len(events) + len(eot)
        self._track_bytes = track_bytes
        self._last_tick = last_tick + eot_delta
        self._step(2)
        try:
            _pwrite(self._fd, bytes([TEXT_TYPE]), old_eot)
        except OSError as e:  # the track is committed; an inner End-of-Track is harmless
            raise OutputError(f"{self.path}: cannot write the take ({e.strerror or e})") from e
        self._step(3)

    def _step(self, step: int) -> None:
        if self._after_step is not None:
            self._after_step(step)

    def close(self, end_frame: int | None = None) -> None:
        """Write every event, end the track at ``end_frame`` (or the last event, whichever is later),
        fsync and close the file. Calling it again does nothing."""
        with self._io_lock:
            if self._closed:
                return
            try:
                self._flush(None)
                end_tick = self._last_tick if end_frame is None else operator.index(end_frame)
                if end_tick > self._last_tick:
                    self._append(b"", self._last_tick, end_tick - self._last_tick)
                try:
                    os.fsync(self._fd)
                except OSError as e:
                    raise OutputError(f"{self.path}: cannot write the take ({e.strerror or e})") from e
            finally:
                with self._lock:
                    self._closed = True
                os.close(self._fd)

    def __enter__(self) -> TakeWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_take_meta(path: str | Path) -> dict | None:
    """The meta dict stored in a take, or None for a MIDI file that is not a take.

    Reads only the first track's events at tick 0, not the whole file. Raises MidiFileError for a
    file that is missing or not MIDI, or a take whose meta is not a JSON object.
    """
    path = Path(path)
    if not path.is_file():
        raise MidiFileError(f"{path}: no such file" if not path.exists() else f"{path}: not a MIDI file")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8 or head[:4] != b"MThd":
                raise MidiFileError(f"{path}: not a MIDI file (no MThd header)")
            f.seek(struct.unpack(">L", head[4:])[0], os.SEEK_CUR)
            while True:
                chunk = f.read(8)
                if len(chunk) < 8:
                    return None
                kind, size = chunk[:4], struct.unpack(">L", chunk[4:])[0]
                if kind == b"MTrk":
                    data = f.read(min(size, META_SCAN_BYTES))
                    break
                f.seek(size, os.SEEK_CUR)  # an unknown chunk: skip it, as readers must
    except OSError as e:
        raise MidiFileError(f"{path}: cannot read the file ({e.strerror or e})") from e
    text = _tick0_take_text(data)
    if text is None:
        return None
    try:
        meta = json.loads(text)
    except ValueError as e:
        raise MidiFileError(f"{path}: the take's meta data is not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise MidiFileError(f"{path}: the take's meta data is a {type(meta).__name__}, not a JSON object")
    return meta


def _tick0_take_text(data: bytes) -> str | None:
    """The JSON of the first ``liveart-take:`` text event at tick 0 of track ``data``, or None."""
    pos, running = 0, None  # running: the last channel status byte, for running status

    def vlq() -> int:
        nonlocal pos
        value = 0
        while True:
            byte = data[pos]
            pos += 1
            value = (value << 7) | (byte & 0x7F)
            if byte < 0x80:
                return value

    try:
        while pos < len(data):
            if vlq():
                return None  # past tick 0
            status = data[pos]
            if status >= 0x80:
                pos += 1
            elif running is None:
                return None  # running status with nothing to run on: not a readable track
            else:
                status = running
            if status == 0xFF:
                meta_type = data[pos]
                pos += 1
                length = vlq()
                payload = data[pos:pos + length]
                pos += length
                if meta_type == TEXT_TYPE and payload.startswith(META_PREFIX.encode("ascii")):
                    return payload[len(META_PREFIX):].decode("latin-1") if pos <= len(data) else None
            elif status in (0xF0, 0xF7):
                pos += vlq()
            elif status >= 0xF0:
                return None  # not allowed in a file
            else:
                running = status
                pos += DATA_BYTES[status & 0xF0]
    except IndexError:
        return None
    return None
