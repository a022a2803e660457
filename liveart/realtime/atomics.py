"""Memory ordering between the audio thread and the others, for compiled code.

An index that one thread publishes after writing data and another thread reads before reading that
data needs a release store and an acquire load: otherwise the compiler (LLVM) or the CPU may reorder
the data writes after the index, and the reader sees the index before the data. numba has no such
operations, so these intrinsics emit LLVM's atomic instructions on one element of an int64 array.
Python code never touches a shared index itself: it calls compiled functions that use these.

    value = load_acquire(header, 0)
    store_release(header, 0, value + 1)
    fence()                      # a full barrier (sequentially consistent)

They also stop LLVM from hoisting a load out of a polling loop, since an atomic load is done every
time it is written.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


def _element_pointer(context, builder, array_type, array, index):
    ary = context.make_array(array_type)(context, builder, array)
    return cgutils.get_item_pointer(context, builder, array_type, ary, [index], wraparound=False)


def _check(array, index):
    if not (isinstance(array, types.Array) and array.dtype == types.int64 and array.ndim == 1):
        raise TypeError("atomics work on a 1-D int64 array")
    if not isinstance(index, types.Integer):
        raise TypeError("the index must be an integer")


@intrinsic
def load_acquire(typingctx, array, index):
    """array[index] with acquire ordering: reads after it see what was written before the matching
    release store."""
    _check(array, index)

    def codegen(context, builder, signature, args):
        ptr = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        return builder.load_atomic(ptr, ordering="acquire", align=8)

    return types.int64(array, index), codegen


@intrinsic
def store_release(typingctx, array, index, value):
    """array[index] = value with release ordering: writes before it are visible to a thread that
    reads the value with an acquire load."""
    _check(array, index)
    if not isinstance(value, types.Integer):
        raise TypeError("the value must be an integer")

    def codegen(context, builder, signature, args):
        ptr = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        val = context.cast(builder, args[2], signature.args[2], types.int64)
        builder.store_atomic(val, ptr, ordering="release", align=8)
        return context.get_dummy_value()

    return types.void(array, index, value), codegen


@intrinsic
def fence(typingctx):
    """A full memory barrier."""

    def codegen(context, builder, signature, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def address_as_voidptr(typingctx, address):
    """An integer address as a ``void *``, for numba.carray (numba types a ctypes ``c_void_p``
    result and an integer argument as plain integers, which carray refuses)."""
    if not isinstance(address, types.Integer):
        raise TypeError("the address must be an integer")

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], ir.IntType(8).as_pointer())

    return types.voidptr(address), codegen
