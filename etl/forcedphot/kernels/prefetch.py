"""Cache hints for kernels that visit sources one after another: the box of a source further on is
asked for while the current one is measured, so its rows arrive from memory in the background.

A hint never faults (it is dropped for an unmapped address) and never changes a result.
"""

from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def prefetch(typingctx, arr, i, j):
    """Hint the cache line of 2-d ``arr[i, j]`` into the caches (never faults; no effect on results)."""
    sig = types.void(arr, i, j)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer2(context, builder, ary.data, cgutils.unpack_tuple(builder, ary.shape),
                                        cgutils.unpack_tuple(builder, ary.strides), aryty.layout, [args[1], args[2]],
                                        wraparound=False, boundscheck=False)
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                            "llvm.prefetch.p0")
        builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, nogil=True)
def prefetch_rows(cy, cx, half, j0, j1, image, original, variance, good, undeblended):
    """Prefetch rows j0..j1-1 of the box around local pixel (cx, cy) of every plane the fit reads.

    One hint per 64-byte cache line: every 16th pixel of the float32 planes, every 64th of ``good``.
    """
    h, w = image.shape
    a = min(max(cx - half, 0), w - 1)
    b = min(max(cx + half, 0), w - 1)
    for yy in range(max(0, cy - half + j0), min(h, cy - half + min(j1, 2 * half + 1))):
        for xx in range(a, b, 16):
            prefetch(image, yy, xx)
            prefetch(variance, yy, xx)
            if undeblended:
                prefetch(original, yy, xx)
        prefetch(image, yy, b)
        prefetch(variance, yy, b)
        if undeblended:
            prefetch(original, yy, b)
        for xx in range(a, b, 64):
            prefetch(good, yy, xx)
        prefetch(good, yy, b)
