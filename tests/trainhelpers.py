"""Tiny datasets and configs the training tests make themselves (no downloads, a few KB)."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
from PIL import Image

FMNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
HAS_FMNIST = (FMNIST_ROOT / "train-images-idx3-ubyte.gz").is_file()

CLASSES = ("circle", "square", "stripes")


def make_image(cls: int, rng: np.random.Generator, size: int = 20) -> Image.Image:
    """A 20x20 RGB image whose class is easy to see: a bright disc, a square, or stripes."""
    yy, xx = np.mgrid[:size, :size]
    base = rng.integers(0, 60, (size, size, 3)).astype(np.float64)
    if cls == 0:
        mask = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2
    elif cls == 1:
        mask = (abs(yy - size / 2) < size / 4) & (abs(xx - size / 2) < size / 4)
    else:
        mask = (xx // 3) % 2 == 0
    base[mask] += 180
    return Image.fromarray(base.clip(0, 255).astype(np.uint8), mode="RGB")


def make_imagefolder(root: Path, per_class: dict[str, int] | None = None, seed: int = 0,
                     corrupt: int = 0) -> Path:
    """ROOT/{train,val}/{circle,square,stripes}/*.png; ``corrupt`` unreadable files in train/circle."""
    per_class = per_class or {"train": 8, "val": 4}
    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for c, name in enumerate(CLASSES):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                make_image(c, rng).save(d / f"{i:03d}.png")
    for i in range(corrupt):
        (root / "train" / "circle" / f"broken_{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return root


def write_idx(path: Path, array: np.ndarray) -> None:
    """An idx file (gzipped when the name ends in .gz), as Fashion-MNIST ships them."""
    magic = 2051 if array.ndim == 3 else 2049
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def make_fake_fmnist(root: Path, n_train: int = 40, n_test: int = 20, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return root


def tiny_overrides(data_root: Path, out: Path, task: str, **extra) -> dict:
    """Config overrides for a tiny model on the image folder above (a few ms per step)."""
    args = {"patch_size": 4, "embed_dim": 32, "depth": 6, "d_state": 4}
    if task == "pretrain":
        args.update(cluster_size=2, decoder_dim=32)
    over = {
        "output_dir": str(out),
        "device": "cpu",
        "model.name": "arm_tiny_pz16",
        "model.img_size": 16,
        "model.in_chans": 3,
        "model.args": args,
        "data.dataset": "imagefolder",
        "data.root": str(data_root),
        "data.workers": 0,
        "data.val_split": "val",
        "data.train_subset": None,
        "data.val_subset": None,
        "data.stats": "imagenet",
        "optim.batch_size": 8,
        "optim.epochs": 2,
        "optim.warmup_epochs": 1,
        "optim.blr": 1e-3,
        "log.progress": "off",
        "log.tensorboard": False,
        "log.every_steps": 1,
        "eval_every_epochs": 1,
        "checkpoint.keep_last": 2,
    }
    if task == "finetune":
        over.update({"aug.auto_augment": "rand-m9-mstd0.5-inc1", "aug.reprob": 0.25, "aug.mixup": 0.8,
                     "aug.cutmix": 1.0, "aug.smoothing": 0.1, "ema.decay": 0.9, "optim.layer_decay": 0.75,
                     "model.drop_path": 0.1})
    over.update(extra)
    return over


def as_flags(overrides: dict) -> list[str]:
    """{"optim.lr": 0.1, "model.args": {...}} -> ["--optim.lr", "0.1", "--model.args", "{...}"]."""
    import json

    flags = []
    for k, v in overrides.items():
        flags.append(f"--{k}")
        if isinstance(v, (dict, list)):
            flags.append(json.dumps(v))
        elif v is None:
            flags.append("null")
        elif isinstance(v, bool):
            flags.append("true" if v else "false")
        else:
            flags.append(str(v))
    return flags


def run_group(cmd: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, capture_output=True, text=True)`` in a session of its own, killed as a whole on timeout.

    For torchrun: ``subprocess.run``'s timeout kills only the launcher, and its workers, still holding the output
    pipes, would keep the test waiting for ever. Here every process of the session gets SIGKILL and the test fails
    at once, with what they printed."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"{cmd[:6]} ran past {timeout} s; its processes were killed\n"
                             + out[-3000:] + err[-3000:]) from None
    finally:
        if proc.poll() is None:  # an exception in this process (Ctrl-C): leave nothing running
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def pipe_holder_script(pid_file: Path, seconds: int) -> str:
    """Python source of a process that starts a child sleeping ``seconds`` with the inherited output pipes (as
    torchrun's workers), writes the child's pid to ``pid_file``, says "started" and sleeps as long itself."""
    return ("import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', 'import time; "
            f"time.sleep({seconds})']); open({str(pid_file)!r}, 'w').write(str(c.pid)); print('started', flush=True); "
            f"time.sleep({seconds})")


def assert_process_gone(pid: int) -> None:
    """``pid`` has ended (killed: the signal is delivered at once; a zombie left for init to reap counts as ended)."""
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with open(f"/proc/{pid}/stat") as f:
        assert f.read().split()[2] == "Z", f"process {pid} is still running"
