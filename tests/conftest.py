import os

import torch

# Without a GPU, run armvision's Triton kernels in Triton's interpreter (on the CPU). This must be
# set before the kernels are defined, i.e. before armvision.ops.*_triton is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


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


def compile_keeping_backward_graphs(module):
    """``torch.compile(module, fullgraph=True)`` through AOT autograd without inductor: (the compiled module, the list
    that each backward graph it compiles is appended to), for tests of what a compiled backward contains."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    graphs = []

    def bw(gm, _):
        graphs.append(gm)
        return make_boxed_func(gm.forward)

    torch._dynamo.reset()
    return torch.compile(module, fullgraph=True, backend=aot_autograd(
        fw_compiler=lambda gm, _: make_boxed_func(gm.forward), bw_compiler=bw)), graphs
