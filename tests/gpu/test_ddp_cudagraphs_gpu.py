"""DDP with CUDA graphs (compile_mode reduce-overhead) on CUDA (skipped without it): two processes on the one GPU
train as the same two processes compiled without graphs (torch's default mode, what compile_mode auto picks for
several processes), with gradient accumulation (DDP's no_sync micro-batch replays while the first micro-batch's
gradients stay alive). The check that CUDA graphs under DDP are correct; their speed needs two GPUs."""

import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from trainhelpers import make_imagefolder, run_group, tiny_overrides  # noqa: E402

import armvision  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
HERE = Path(__file__).parent
SRC = str(Path(armvision.__file__).resolve().parents[1])


def _run(data: Path, tmp: Path, name: str, mode: str) -> tuple[dict, dict]:
    over = tiny_overrides(data, tmp / name, "pretrain", **{
        "device": "cuda", "precision": "fp32", "compile": True, "compile_mode": mode, "data.val_split": None,
        "eval_every_epochs": 0, "optim.batch_size": 8, "optim.micro_batch": 2,
        "aug.scale": [1.0, 1.0], "aug.ratio": [1.0, 1.0], "aug.hflip": 0.0})
    out = tmp / f"out_{name}"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, str(HERE.parent)]), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE / "ddp_one_gpu_worker.py"), json.dumps(over), str(out)]
    res = run_group(cmd, env, timeout=540)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return json.loads((out / "summary.json").read_text()), load_file(out / "model.safetensors")


def test_ddp_with_cuda_graphs_trains_as_ddp_without(tmp_path):
    data = make_imagefolder(tmp_path / "data")
    # the two groups at once (4 processes on the card): their compiles take the time, the GPU work is tiny
    with ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(_run, data, tmp_path, name, mode)
                for name, mode in (("graphs", "reduce-overhead"), ("plain", "default"))]
        (graphs, w_graphs), (plain, w_plain) = (r.result() for r in runs)
    assert graphs["ddp"] and graphs["ran_compiled"] and graphs["cudagraphs"]
    assert plain["ran_compiled"] and not plain["cudagraphs"]
    assert graphs["processes"] == plain["processes"] == 2 and graphs["steps"] == plain["steps"] == 6
    losses = [v for _, v in graphs["loss_curve"]]
    assert losses == pytest.approx([v for _, v in plain["loss_curve"]], rel=1e-4, abs=1e-6)
    assert losses[0] != losses[-1]
    worst = max((w_graphs[k].float() - w_plain[k].float()).abs().max().item() for k in w_plain)
    assert worst < 1e-4, worst
