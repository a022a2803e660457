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


_LLVM_TYPES = {"void": ir.VoidType(), "i32": ir.IntType(32), "i64": ir.IntType(64)}
_NUMBA_TYPES = {"void": types.void, "i32": types.uint32, "i64": types.int64}


def c_caller(ret: str, *args: str):
    """An intrinsic ``call(address, *values)`` calling the C function at ``address`` (an integer)
    with the given signature: ``ret`` and ``args`` each 'i32' (a 32-bit unsigned), 'i64' (a 64-bit
    integer or a pointer: the same registers in the x86-64 and AArch64 C calling conventions) or
    'void' (ret only). Unlike a ctypes function object, it leaves the caller cacheable: the address
    is data, not a constant compiled in."""
    fnty = ir.FunctionType(_LLVM_TYPES[ret], [_LLVM_TYPES[a] for a in args])

    def typer(typingctx, address, *values):
        def codegen(context, builder, signature, llargs):
            fn = builder.inttoptr(llargs[0], fnty.as_pointer())
            cast = [context.cast(builder, v, t, _NUMBA_TYPES[a])
                    for v, t, a in zip(llargs[1:], signature.args[1:], args)]
            result = builder.call(fn, cast)
            return context.get_dummy_value() if ret == "void" else result

        return _NUMBA_TYPES[ret](address, *values), codegen

    # An intrinsic's arguments must be named: one definition per arity.
    names = ", ".join(f"a{i}" for i in range(len(args)))
    namespace = {"typer": typer}
    exec(f"def call(typingctx, address{', ' if names else ''}{names}):\n"
         f"    return typer(typingctx, address{', ' if names else ''}{names})\n", namespace)
    return intrinsic(namespace["call"])
