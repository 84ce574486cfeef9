"""DeviceFeeder on CUDA (skipped without it): batches prepared on a side stream in a thread reach the
training stream complete and in order, and their memory is not reused while the step still reads it."""

import pytest
import torch

from armvision.data import DeviceFeeder, normalize_batch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def test_side_stream_batches_are_complete_and_ordered():
    dev = torch.device("cuda")
    host = [torch.randint(0, 256, (64, 3, 96, 96), dtype=torch.uint8).pin_memory() for _ in range(12)]
    w = torch.randn(96, 96, device=dev)

    def prepare(batch, index):
        x = normalize_batch(batch.to(dev, non_blocking=True), MEAN, STD)
        for _ in range(20):  # keep the side stream busy, so a missing wait would read unfinished work
            x = x @ w
            x = x / x.norm(dim=-1, keepdim=True)
        return x, index

    want = []
    for batch in host:
        x = normalize_batch(batch.to(dev), MEAN, STD)
        for _ in range(20):
            x = x @ w
            x = x / x.norm(dim=-1, keepdim=True)
        want.append(x)
    torch.cuda.synchronize()
    big = torch.randn(4096, 4096, device=dev)
    with DeviceFeeder(iter(host), prepare, dev, first_index=5) as feeder:
        got = []
        for x, index in feeder:
            big = big @ big  # the "training step" on the default stream, while the next batch is prepared
            big = big / big.norm()
            got.append((index, x.sum().item(), want[index - 5].sum().item()))
    assert [g[0] for g in got] == list(range(5, 17))
    for _, s, w_ in got:
        assert s == pytest.approx(w_, rel=1e-4)


def test_memory_is_not_reused_while_the_training_stream_reads_it():
    dev = torch.device("cuda")

    def prepare(batch, index):
        return torch.full((1 << 20,), float(index), device=dev)

    big = torch.randn(4096, 4096, device=dev)
    checks = []
    with DeviceFeeder(iter(range(30)), prepare, dev) as feeder:
        for i, x in enumerate(feeder):
            for _ in range(3):  # slow work on the default stream before x is read (no host sync in the loop)
                big = big @ big
                big = big / big.norm()
            checks.append((x == float(i)).all())
            del x  # freed here: its memory must wait for the default stream's read above
    assert all(bool(c) for c in checks)
