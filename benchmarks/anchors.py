"""The reference figures the benchmarks compare against: one table, with the card and the date.

Measured on one NVIDIA H200 on 2026-11-30 (torch 2.11.0+cu130, Triton 3.6, bf16 autocast) beside
armvision at commit dd46d51. "Reference" is the official ARM code (OliverRensu/ARM) on mamba-ssm
2.3.2.post1's CUDA kernels built for sm_90; its selective-scan times are mamba-ssm's
``selective_scan_fn``. Compare only with runs on the same card kind: `benchmarks/scan.py` can also
build and time the CUDA kernel in the same run (``--mamba-ssm-src``), which is the better comparison.
"""

from __future__ import annotations

CARD = "NVIDIA H200"
DATE = "2026-11-30"
SOFTWARE = "torch 2.11.0+cu130, Triton 3.6, mamba-ssm 2.3.2.post1 (CUDA kernel built for sm_90)"

# selective scan, bf16, d_state 16, delta_softplus, z gate: (b, e, t) -> forward+backward ms
SCAN_REFERENCE_FWD_BWD_MS: dict[tuple[int, int, int], float] = {
    (256, 768, 128): 2.990,
    (128, 1024, 128): 1.993,
    (128, 1536, 128): 2.970,
    (128, 768, 197): 3.132,
    (64, 768, 1024): 4.252,
}
# armvision's Triton scan in the same run (states recomputed in the backward, as models call it)
SCAN_ARMVISION_FWD_BWD_MS: dict[tuple[int, int, int], float] = {
    (256, 768, 128): 1.419,
    (128, 1024, 128): 0.987,
    (128, 1536, 128): 1.408,
    (128, 768, 197): 1.135,
    (64, 768, 1024): 2.842,
}

# one training step (bf16 autocast, fused AdamW, clip 3.0, random images): the reference code's
# images/s and peak GiB at the workload's batch
TRAIN_STEP_REFERENCE: dict[str, tuple[float, float]] = {
    "pretrain_b": (2047, 17.8),  # ARM-B pretraining, 192px, batch 256
    "pretrain_l": (607, 22.3),  # ARM-L pretraining, 192px, batch 128
    "finetune_b": (483, 20.1),  # ARM-B fine-tuning, 224px, four directions, batch 128
}

# the project's target: at least twice the reference's throughput, at most half its scan time
TARGET_SPEEDUP = 2.0


def describe() -> str:
    """One line naming where the reference figures come from."""
    return f"reference figures: {CARD}, {DATE} ({SOFTWARE})"
