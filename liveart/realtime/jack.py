"""The JACK backend's process callback: compiled, registered with libjack, never takes the GIL.

:func:`process` is a numba cfunc that, each JACK cycle, reads the MIDI in port with frame offsets,
runs the live host's compiled cycle (:func:`liveart.realtime.callback.cycle`: the engine's block and
all that goes with it), writes the two audio ports and the MIDI out port, and times itself. Its
state comes through the one ``void *`` JACK passes: the address of a :class:`JackIo` table holding
libjack's functions, the ports, scratch buffers and the handle tables
(:mod:`liveart.realtime.handles`) of the engine's state. libjack is called through addresses in that
table (not ctypes objects compiled in), so numba caches the callback: it compiles once a machine.
"""

from __future__ import annotations

import ctypes

import numba
import numpy as np

from . import block as blk
from . import callback as cb
from . import handles, jackapi
from .atomics import address_as_voidptr, c_caller
from .unpack import unpack_channels, unpack_config, unpack_live, unpack_state, unpack_timbre, unpack_voices

MAX_BLOCK_FRAMES = 8192
MIDI_ROWS = 256  # MIDI messages read (or written) in one cycle at most
# JackIo words.
(IO_CLIENT, IO_MIDI_IN, IO_MIDI_OUT, IO_OUT_0, IO_OUT_1, IO_CFG, IO_VOICES, IO_CHANNELS, IO_STATE, IO_TIMBRE,
 IO_LIVE, IO_ROWS_IN, IO_ROWS_OUT, IO_EVENT, IO_BYTES, IO_AUDIO,
 IO_PORT_BUFFER, IO_EVENT_COUNT, IO_EVENT_GET, IO_CLEAR_BUFFER, IO_EVENT_WRITE, IO_LAST_FRAME_TIME, IO_FRAME_TIME,
 IO_GET_TIME, IO_WRITE, IO_WAKE_FD, IO_SIZE) = range(27)
_FUNCTIONS = {IO_PORT_BUFFER: "jack_port_get_buffer", IO_EVENT_COUNT: "jack_midi_get_event_count",
              IO_EVENT_GET: "jack_midi_event_get", IO_CLEAR_BUFFER: "jack_midi_clear_buffer",
              IO_EVENT_WRITE: "jack_midi_event_write", IO_LAST_FRAME_TIME: "jack_last_frame_time",
              IO_FRAME_TIME: "jack_frame_time", IO_GET_TIME: "jack_get_time"}

_port_buffer = c_caller("i64", "i64", "i32")  # void *jack_port_get_buffer(jack_port_t *, jack_nframes_t)
_event_count = c_caller("i32", "i64")  # uint32_t jack_midi_get_event_count(void *buffer)
_event_get = c_caller("i32", "i64", "i64", "i32")  # int jack_midi_event_get(event *, void *buffer, uint32_t)
_clear_buffer = c_caller("void", "i64")  # void jack_midi_clear_buffer(void *buffer)
_event_write = c_caller("i32", "i64", "i32", "i64", "i64")  # int jack_midi_event_write(buffer, time, data, size)
_frame_time = c_caller("i32", "i64")  # jack_nframes_t jack_(last_)frame_time(const jack_client_t *)
_get_time = c_caller("i64")  # jack_time_t jack_get_time(void): microseconds
_write = c_caller("i64", "i64", "i64", "i64")  # ssize_t write(int fd, const void *buf, size_t count)


class JackIo:
    """The callback's table and the arrays it points to (kept alive here)."""

    def __init__(self, engine, live):
        self.words = np.zeros(IO_SIZE, np.int64)
        self.tables = [handles.table(t) for t in (engine.cfg, engine.bank.voices, engine.ch, engine.s, engine.tb, live)]
        self.rows_in = np.zeros((MIDI_ROWS, cb.MSG), np.int64)
        self.rows_out = np.zeros((MIDI_ROWS, cb.MSG), np.int64)
        self.event = np.zeros(jackapi.EVENT_WORDS, np.int64)
        self.bytes = np.zeros(8, np.uint8)
        self.audio = np.zeros((MAX_BLOCK_FRAMES, 2), np.float32)
        w = self.words
        for i, t in zip(range(IO_CFG, IO_LIVE + 1), self.tables):
            w[i] = t.ctypes.data
        for i, a in ((IO_ROWS_IN, self.rows_in), (IO_ROWS_OUT, self.rows_out), (IO_EVENT, self.event),
                     (IO_BYTES, self.bytes), (IO_AUDIO, self.audio)):
            w[i] = a.ctypes.data
        for i, name in _FUNCTIONS.items():
            w[i] = ctypes.cast(jackapi._lib[name], ctypes.c_void_p).value
        w[IO_WRITE] = ctypes.cast(ctypes.CDLL(None).write, ctypes.c_void_p).value
        w[IO_WAKE_FD] = -1

    def set_wake(self, fd: int) -> None:
        """A non-blocking pipe's write end: the callback writes a byte to it in a cycle that asked the
        timbre worker for something (a write to a pipe does not wait), so the worker need not poll."""
        self.words[IO_WAKE_FD] = fd

    def set_ports(self, client, midi_in, midi_out, out_0, out_1) -> None:
        """The client's and ports' addresses (0 until a port is registered: the callback skips it)."""
        w = self.words
        for i, obj in ((IO_CLIENT, client), (IO_MIDI_IN, midi_in), (IO_MIDI_OUT, midi_out), (IO_OUT_0, out_0),
                       (IO_OUT_1, out_1)):
            w[i] = jackapi.address(obj._ptr) if obj is not None else 0

    @property
    def address(self) -> int:
        return self.words.ctypes.data


@numba.cfunc(jackapi.PROCESS_SIGNATURE, nopython=True, cache=True, error_model="numpy")
def process(nframes, arg):
    w = numba.carray(arg, (IO_SIZE,), np.int64)
    began = _get_time(w[IO_GET_TIME])
    client = w[IO_CLIENT]
    if client == 0 or nframes > MAX_BLOCK_FRAMES:
        return 0
    lv = unpack_live(w[IO_LIVE])
    start = np.int64(_frame_time(w[IO_LAST_FRAME_TIME], client))
    i = lv.ls[cb.L_CALLBACKS] % cb.TIMING_HISTORY
    # How late into its cycle the callback started (signed: the estimate can lie a little before it).
    lv.wake_frames[i] = ((np.int64(_frame_time(w[IO_FRAME_TIME], client)) - start + 0x80000000) & 0xFFFFFFFF) - 0x80000000
    rows_in = numba.carray(address_as_voidptr(w[IO_ROWS_IN]), (MIDI_ROWS, cb.MSG), np.int64)
    n_in = 0
    if w[IO_MIDI_IN] != 0:
        buf = _port_buffer(w[IO_PORT_BUFFER], w[IO_MIDI_IN], nframes)
        event = numba.carray(address_as_voidptr(w[IO_EVENT]), (jackapi.EVENT_WORDS,), np.int64)
        for k in range(_event_count(w[IO_EVENT_COUNT], buf)):
            if n_in >= MIDI_ROWS:
                break
            if _event_get(w[IO_EVENT_GET], w[IO_EVENT], buf, k) != 0:
                continue
            size = event[1]
            if size < 1 or size > 3:  # system exclusive and the like: not for liveart
                continue
            data = jackapi.event_bytes(event)
            r = rows_in[n_in]
            r[0] = event[0] & 0xFFFFFFFF
            r[1] = size
            r[2] = data[0]
            r[3] = data[1] if size > 1 else 0
            r[4] = data[2] if size > 2 else 0
            n_in += 1
    audio = numba.carray(address_as_voidptr(w[IO_AUDIO]), (MAX_BLOCK_FRAMES, 2), np.float32)[:nframes]
    rows_out = numba.carray(address_as_voidptr(w[IO_ROWS_OUT]), (MIDI_ROWS, cb.MSG), np.int64)
    s = unpack_state(w[IO_STATE])
    n_out = cb.cycle(unpack_config(w[IO_CFG]), unpack_voices(w[IO_VOICES]), unpack_channels(w[IO_CHANNELS]), s,
                     unpack_timbre(w[IO_TIMBRE]), lv, start, began, nframes, rows_in, n_in, audio, rows_out)
    if w[IO_WAKE_FD] >= 0 and s.st[blk.S_STOPPED]:  # the block asked the timbre worker for frames
        _write(w[IO_WRITE], w[IO_WAKE_FD], w[IO_BYTES], 1)
    for port, column in ((w[IO_OUT_0], 0), (w[IO_OUT_1], 1)):
        if port != 0:
            out = numba.carray(address_as_voidptr(_port_buffer(w[IO_PORT_BUFFER], port, nframes)), (nframes,),
                               np.float32)
            for j in range(nframes):
                out[j] = audio[j, column]
    if w[IO_MIDI_OUT] != 0:
        buf = _port_buffer(w[IO_PORT_BUFFER], w[IO_MIDI_OUT], nframes)
        _clear_buffer(w[IO_CLEAR_BUFFER], buf)
        data = numba.carray(address_as_voidptr(w[IO_BYTES]), (8,), np.uint8)
        for k in range(n_out):
            r = rows_out[k]
            for b in range(r[1]):
                data[b] = r[2 + b]
            if _event_write(w[IO_EVENT_WRITE], buf, min(r[0], nframes - 1), w[IO_BYTES], r[1]) != 0:
                lv.ls[cb.L_OUT_DROPPED] += 1  # the port's buffer is full
    lv.durations[i] = _get_time(w[IO_GET_TIME]) - began
    return 0
