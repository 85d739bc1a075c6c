"""oneDNN's matmul as a JAX function on float32 matrices, for dense layers on the CPU.

One XLA FFI call into ``onednn_matmul.cc`` (loaded by :mod:`jaxcnn.native.build`), which
multiplies either operand transposed in place, so a dense layer's three products (x @ W,
g @ W^T, x^T @ g) need no transpose copies. ``jax.vmap`` stacks slices in front
(``vmap_method="expand_dims"``), which the C++ side loops over. ``jaxcnn.models.dense``
makes it differentiable; call it only where :func:`jaxcnn.native.native_status` says the
library is available.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def matmul(a, b, transpose_a: bool = False, transpose_b: bool = False):
    """``op(a) @ op(b)`` for 2-D float32 ``a`` and ``b``, where ``op`` transposes when asked."""
    m = a.shape[-1] if transpose_a else a.shape[-2]
    k = a.shape[-2] if transpose_a else a.shape[-1]
    k_b, n = (b.shape[-1], b.shape[-2]) if transpose_b else (b.shape[-2], b.shape[-1])
    if a.ndim != 2 or b.ndim != 2 or k != k_b:
        raise ValueError(f"matmul needs two matrices with matching inner sizes; got "
                         f"{a.shape}{'^T' * transpose_a} @ {b.shape}{'^T' * transpose_b}")
    out = jax.ShapeDtypeStruct((m, n), jnp.float32)
    return jax.ffi.ffi_call("jaxcnn_matmul", out, vmap_method="expand_dims")(
        a, b, transpose=np.asarray([transpose_a, transpose_b], np.int64))
