"""torchrun with 2 CPU processes (gloo): the ranks agree on every weight; metrics cover all images."""

import json
import os
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from trainhelpers import assert_process_gone, make_imagefolder, pipe_holder_script, run_group, tiny_overrides

import armvision

HERE = Path(__file__).parent
SRC = str(Path(armvision.__file__).resolve().parents[1])


def test_two_gloo_processes_end_with_identical_weights(tmp_path):
    data = make_imagefolder(tmp_path / "data", corrupt=1)
    # unreadable validation files at indices 4 and 9: one in each rank's shard (rank r takes r, r + 2, ...)
    for cls in ("circle", "square"):
        (data / "val" / cls / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    out = tmp_path / "out"
    out.mkdir()
    # micro-batch 2 on each of 2 processes, accumulated to the global batch of 8: DDP's no_sync path
    over = tiny_overrides(data, tmp_path / "run", "finetune", **{"optim.epochs": 2, "optim.micro_batch": 2})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, str(HERE)]), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE / "dist_worker.py"), json.dumps(over), str(out)]
    res = run_group(cmd, env, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for name in ("rank", "ema"):
        a, b = load_file(out / f"{name}0.safetensors"), load_file(out / f"{name}1.safetensors")
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), f"{name} weights differ between the ranks"
    s0, s1 = (json.loads((out / f"summary{r}.json").read_text()) for r in (0, 1))
    # 25 files (one unreadable) over 2 ranks: 12 each = 6 micro-batches of 2 = 3 steps of 2 per epoch
    assert s0["processes"] == 2 and s0["steps"] == s1["steps"] == 6
    assert s0["images_seen"] == 48
    # evaluation sums over both ranks: all 12 readable validation images, once (the stand-ins for the 2
    # unreadable ones left out); every rank gets the same numbers and both files, gathered from both ranks
    assert s0["eval"]["images"] == 12 and s0["eval"] == s1["eval"]
    broken = [str(data / "val" / c / "zz_broken.png") for c in ("circle", "square")]
    assert s0["eval"]["unreadable_files"] == 2 and s0["eval"]["unreadable_file_names"] == broken
    # the unreadable training file: one file (whichever rank read it, in each epoch), known to both ranks
    assert s0["unreadable_files"] == s1["unreadable_files"] == 1
    assert s0["unreadable_file_names"] == s1["unreadable_file_names"] == [str(data / "train/circle/broken_0.png")]
    assert s0["loss_curve"] == s1["loss_curve"]  # logged losses are averaged over the ranks
    saved = load_file(tmp_path / "run" / "checkpoints" / "latest" / "model.safetensors")
    held = load_file(out / "rank0.safetensors")
    assert saved.keys() == held.keys() and all(torch.equal(saved[k], held[k]) for k in saved)  # what both hold
    assert not list((tmp_path / "run").glob("rank*"))  # only rank 0 writes into the run directory


def test_a_launch_past_its_timeout_fails_at_once_with_its_workers_killed(tmp_path):
    """The torchrun tests' runner: a launcher whose worker keeps the output pipe open (as torchrun's do) fails the
    test when its time is up, instead of waiting for the worker, and the worker is gone."""
    pid_file = tmp_path / "worker.pid"
    t0 = time.monotonic()
    with pytest.raises(AssertionError, match="ran past 3 s; its processes were killed") as info:
        run_group([sys.executable, "-c", pipe_holder_script(pid_file, 120)], dict(os.environ), timeout=3)
    assert time.monotonic() - t0 < 30
    assert "started" in str(info.value)
    assert_process_gone(int(pid_file.read_text()))
