import os

import pytest
import torch


@pytest.fixture
def seed():
    """Fresh random inputs on every run; the seed is printed so that a failure can be replayed
    (pytest shows captured output of failing tests). Set ARMVISION_TEST_SEED to replay one."""
    s = int(os.environ.get("ARMVISION_TEST_SEED", int.from_bytes(os.urandom(4), "little")))
    print(f"random seed: {s} (replay with ARMVISION_TEST_SEED={s})")
    torch.manual_seed(s)
    return s


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()
