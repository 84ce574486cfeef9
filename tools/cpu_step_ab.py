"""A/B of the torch scan's CPU path: the scan at a git revision against the working tree's, interleaved in one process.

Alternates before/after (ABBA order) so both see the same machine load; times the scan alone and a demo-sized
pretraining and fine-tuning step (batch 128, the fmnist presets' model). ``--clock cpu`` times CPU seconds of the
process (least disturbed by other jobs on a shared machine; use with ``--threads 1``).

    python tools/cpu_step_ab.py --ref main --reps 10 --threads 1 --clock cpu
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

import armvision
import armvision.ops.scan as current


def scan_at(ref: str) -> types.ModuleType:
    root = Path(__file__).resolve().parents[1]
    try:
        src = subprocess.run(["git", "-C", str(root), "show", f"{ref}:src/armvision/ops/scan.py"], check=True,
                             capture_output=True, text=True).stdout
    except subprocess.CalledProcessError as e:
        sys.exit(f"cpu_step_ab: error: git cannot show src/armvision/ops/scan.py at {ref!r}: {e.stderr.strip()}")
    mod = types.ModuleType("scan_at_ref")
    exec(compile(src, f"{ref}:scan.py", "exec"), mod.__dict__)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ref", default="HEAD", help="git revision of the 'before' scan (default HEAD)")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    clock = time.process_time if a.clock == "cpu" else time.perf_counter
    old = scan_at(a.ref)
    impls = {"before": (old._SelectiveScanTorch.forward, old._SelectiveScanTorch.backward),
             "after": (current._SelectiveScanTorch.forward, current._SelectiveScanTorch.backward)}

    def use(name):
        fwd, bwd = impls[name]
        current._SelectiveScanTorch.forward, current._SelectiveScanTorch.backward = staticmethod(fwd), staticmethod(bwd)

    torch.manual_seed(0)
    geo = dict(img_size=28, in_chans=1, patch_size=7, embed_dim=128, depth=6, d_state=8)
    pre = armvision.create_model("arm_tiny_pz16", pretraining=True, cluster_size=2, decoder_dim=128, **geo)
    clf = armvision.create_model("arm_tiny_pz16", num_classes=10, **geo)
    x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
    b, t, e, n = 128, 12, 128, 8
    inp = [torch.randn(b, t, e), torch.randn(b, t, e), -torch.rand(e, n) - 0.5, torch.randn(b, t, n),
           torch.randn(b, t, n), torch.randn(e), torch.randn(b, t, e), torch.randn(e)]
    inp = [v.requires_grad_() for v in inp]

    def scan():
        current.selective_scan_torch(*inp, True).sum().backward()

    def pre_step():
        pre.zero_grad(set_to_none=True)
        loss = pre(x)
        loss.backward()
        return loss.item()

    def ft_step():
        clf.zero_grad(set_to_none=True)
        F.cross_entropy(clf(x), y).backward()

    losses = {}
    for name in impls:
        use(name)
        losses[name] = pre_step()
    print(f"pretraining loss before {losses['before']:.8f} after {losses['after']:.8f}")
    for label, fn in (("scan fwd+bwd (128, 12, 128, 8)", scan), ("pretraining step, batch 128", pre_step),
                      ("fine-tuning step, batch 128", ft_step)):
        times = {"before": [], "after": []}
        for r in range(a.reps):
            for name in ("before", "after") if r % 2 == 0 else ("after", "before"):
                use(name)
                t0 = clock()
                fn()
                times[name].append(clock() - t0)
        mb, ma = (statistics.median(times[k]) * 1e3 for k in ("before", "after"))
        print(f"{label}: before {mb:.1f} ms, after {ma:.1f} ms ({a.clock}, median of {a.reps}); ratio {mb / ma:.2f}")


if __name__ == "__main__":
    main()
