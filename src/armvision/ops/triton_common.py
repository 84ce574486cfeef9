"""Pieces shared by armvision's Triton kernels."""

import triton
import triton.language as tl


@triton.jit
def _rows(idx_ptr, s, T, HAS_IDX: tl.constexpr):
    """Token rows of sequence steps s, and the mask of the steps in [0, T): ``idx_ptr[s]`` with an
    index map (a direction's token order), else s itself."""
    ms = (s >= 0) & (s < T)
    if HAS_IDX:
        row = tl.load(idx_ptr + s, mask=ms, other=0).to(tl.int64)
    else:
        row = s.to(tl.int64)
    return row, ms
