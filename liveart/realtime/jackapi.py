"""libjack's real-time calls for compiled code, and a compiled process callback's registration.

JACK calls a client's process callback on its real-time thread once a cycle. A Python callback
must take the GIL there, so any Python thread in the process can delay the audio (over a thousand
xruns in 30 s beside two busy threads, ../docs/live.md). This module lets a numba ``@cfunc`` be that
callback instead: it never enters the interpreter. The functions it calls are libjack's own, through
ctypes function objects that numba calls directly in nopython mode:

- ``port_buffer(port, nframes)``: a port's buffer for this cycle (an integer address);
- ``midi_event_count(buffer)``, ``midi_event_get(event, buffer, index)``: read MIDI with frame
  offsets into a preallocated :data:`EVENT_WORDS` int64 array (jack_midi_event_t: time, size, data);
- ``midi_clear_buffer(buffer)``, ``midi_event_write(buffer, offset, data, size)``: write MIDI;
- ``last_frame_time(client)``: the cycle's first frame; ``frame_time(client)``: the frame now;
  ``get_time()``: microseconds now.

The client and its ports are made with JACK-Client (module ``jack``), off the real-time thread;
:func:`set_process_callback` hands libjack the cfunc before the client is activated.
"""

from __future__ import annotations

import ctypes
import ctypes.util

import numba
import numpy as np

from .atomics import address_as_voidptr

EVENT_WORDS = 3  # jack_midi_event_t on a 64-bit system: uint32 time (+ padding), size_t size, data pointer
PROCESS_SIGNATURE = numba.types.int32(numba.types.uint32, numba.types.voidptr)  # int (*)(jack_nframes_t, void *)

_NAMES = ("libjack.so.0", "libjack.so", ctypes.util.find_library("jack"), "libjack64.dll", "libjack.dll")


def _load():
    for name in _NAMES:
        if name:
            try:
                return ctypes.CDLL(name)
            except OSError:
                continue
    return None


_lib = _load()
AVAILABLE = _lib is not None


def _function(name, restype, *argtypes):
    if _lib is None:
        return None
    f = _lib[name]  # a new function object each time: two restypes for one function
    f.restype = restype
    f.argtypes = list(argtypes)
    return f


_vp, _u32 = ctypes.c_void_p, ctypes.c_uint32
port_buffer = _function("jack_port_get_buffer", ctypes.c_size_t, _vp, _u32)
audio_buffer = _function("jack_port_get_buffer", ctypes.POINTER(ctypes.c_float), _vp, _u32)
midi_event_count = _function("jack_midi_get_event_count", _u32, ctypes.c_size_t)
midi_event_get = _function("jack_midi_event_get", ctypes.c_int, _vp, ctypes.c_size_t, _u32)
midi_clear_buffer = _function("jack_midi_clear_buffer", None, ctypes.c_size_t)
midi_event_write = _function("jack_midi_event_write", ctypes.c_int, ctypes.c_size_t, _u32, _vp, ctypes.c_size_t)
last_frame_time = _function("jack_last_frame_time", _u32, ctypes.c_size_t)
frame_time = _function("jack_frame_time", _u32, ctypes.c_size_t)
get_time = _function("jack_get_time", ctypes.c_uint64)
_set_process_callback = _function("jack_set_process_callback", ctypes.c_int, _vp, _vp, _vp)


@numba.njit(cache=True, nogil=True)
def event_bytes(event):
    """The data of an event filled by midi_event_get, as a uint8 array (a view of JACK's buffer,
    valid in this cycle)."""
    return numba.carray(address_as_voidptr(event[2]), (event[1],), np.uint8)


def address(cffi_pointer) -> int:
    """A JACK-Client object's C pointer (``client._ptr``, ``port._ptr``) as an integer."""
    import jack

    return int(jack._ffi.cast("uintptr_t", cffi_pointer))


def set_process_callback(client, callback, arg: int) -> None:
    """Make ``callback`` (a numba cfunc of :data:`PROCESS_SIGNATURE`) ``client``'s process callback,
    called with ``arg`` (an address its code reads its state from). Before ``client.activate()``.
    The caller keeps ``callback`` and whatever ``arg`` points to alive until the client is closed."""
    if not AVAILABLE:
        raise OSError("libjack is not installed")
    status = _set_process_callback(address(client._ptr), callback.address, arg)
    if status != 0:
        raise OSError(f"jack_set_process_callback failed ({status})")
