"""Lock-free single-producer/single-consumer rings for the audio thread and the others.

A ring is two preallocated numpy arrays: ``header`` (int64; the write count at WRITE, the read count
at READ, each on its own cache line) and ``data`` (shape (capacity, width), any dtype: one row a
message). The producer writes a row, then publishes the new write count with a release store; the
consumer reads the count with an acquire load, reads the row, then publishes its read count. Counts
only grow, and ``capacity`` is a power of two, so a row is ``data[count & (capacity - 1)]``. Neither
side waits: a full ring refuses the row (the producer counts the drop), an empty one gives nothing.

The functions are compiled (numba) and used from both sides: from compiled real-time code with the
arrays themselves, from Python through :class:`Ring`. Python never reads or writes the counts
itself, so the ordering is the same on every CPU.
"""

from __future__ import annotations

import numba
import numpy as np

from .atomics import load_acquire, store_release

WRITE = 0  # header index of the write count
READ = 8  # header index of the read count (64 bytes on: another cache line)
HEADER_LENGTH = 16

_jit = numba.njit(nogil=True, cache=True)


@_jit
def ring_count(header):
    """Rows waiting to be read."""
    return load_acquire(header, WRITE) - load_acquire(header, READ)


@_jit
def ring_reserve(header, data):
    """Producer: the index of the row to fill next, or -1 when the ring is full. Fill it, then
    :func:`ring_publish`."""
    written = header[WRITE]  # only the producer writes it
    if written - load_acquire(header, READ) >= data.shape[0]:
        return -1
    return written & (data.shape[0] - 1)


@_jit
def ring_publish(header):
    """Producer: the row from :func:`ring_reserve` is complete; the consumer may read it."""
    store_release(header, WRITE, header[WRITE] + 1)


@_jit
def ring_push(header, data, row):
    """Producer: copy ``row`` in; False when the ring is full (nothing written)."""
    i = ring_reserve(header, data)
    if i < 0:
        return False
    for k in range(data.shape[1]):
        data[i, k] = row[k]
    ring_publish(header)
    return True


@_jit
def ring_peek(header, data):
    """Consumer: the index of the oldest unread row, or -1 when there is none. Read it, then
    :func:`ring_release`."""
    read = header[READ]  # only the consumer writes it
    if load_acquire(header, WRITE) == read:
        return -1
    return read & (data.shape[0] - 1)


@_jit
def ring_release(header):
    """Consumer: done with the row from :func:`ring_peek`; the producer may reuse it."""
    store_release(header, READ, header[READ] + 1)


@_jit
def ring_pop(header, data, out):
    """Consumer: copy the oldest row into ``out``; False when there is none."""
    i = ring_peek(header, data)
    if i < 0:
        return False
    for k in range(data.shape[1]):
        out[k] = data[i, k]
    ring_release(header)
    return True


@_jit
def ring_pop_many(header, data, out):
    """Consumer: copy up to len(out) rows into ``out`` (oldest first); how many were copied."""
    n = 0
    while n < out.shape[0]:
        i = ring_peek(header, data)
        if i < 0:
            break
        for k in range(data.shape[1]):
            out[n, k] = data[i, k]
        ring_release(header)
        n += 1
    return n


class Ring:
    """A ring's arrays and its Python side: ``push`` for a Python producer, ``pop``/``pop_many`` for
    a Python consumer. Compiled code takes ``ring.header`` and ``ring.data`` directly."""

    def __init__(self, capacity: int, width: int, dtype=np.int64):
        if capacity < 1 or capacity & (capacity - 1):
            raise ValueError(f"a ring's capacity must be a power of two, not {capacity}")
        self.header = np.zeros(HEADER_LENGTH, np.int64)
        self.data = np.zeros((capacity, width), dtype)
        self.dropped = 0  # rows a full ring refused from the Python producer

    @property
    def capacity(self) -> int:
        return self.data.shape[0]

    def __len__(self) -> int:
        return int(ring_count(self.header))

    def push(self, row) -> bool:
        ok = ring_push(self.header, self.data, np.asarray(row, self.data.dtype))
        if not ok:
            self.dropped += 1
        return bool(ok)

    def pop(self) -> np.ndarray | None:
        out = np.empty(self.data.shape[1], self.data.dtype)
        return out if ring_pop(self.header, self.data, out) else None

    def pop_many(self, limit: int | None = None) -> np.ndarray:
        """Every waiting row (up to ``limit``), oldest first, shape (n, width)."""
        out = np.empty((self.capacity if limit is None else limit, self.data.shape[1]), self.data.dtype)
        return out[: ring_pop_many(self.header, self.data, out)]
