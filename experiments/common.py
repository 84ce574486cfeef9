"""Shared machinery of the studies: scales, resumable jobs, pretraining / fine-tuning / probing, outputs.

Every study is a list of *jobs* (a pretraining run, a fine-tuning run, a frozen-feature probe). A job
is identified by a key built from everything that defines it; its result is a small JSON file
(``OUT/jobs/KEY.json``) and its run directory lives under ``STATE/runs/KEY``. A job whose JSON exists
(and whose checkpoints are still there when a later job needs them) is not run again, so studies share
runs (study 1's seed-0 pretraining is every ablation's baseline) and resume across invocations. A job
being run by another process (an exclusive ``flock`` on ``STATE/locks/KEY.lock``) is skipped for now
and picked up again on the next pass (``--wait``) or the next invocation, which is how
``run_gpu.sh`` spreads the studies over several GPUs. Training goes through the armvision Python API
(:func:`armvision.train.load_config`, :func:`pretrain`, :func:`finetune`); probes through
:func:`armvision.analysis.probe_model` (the chain `armvision linprobe` and `armvision knn` run too).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from armvision.train import finetune, load_config, pretrain  # noqa: E402

_logger = logging.getLogger("experiments")


@dataclass(frozen=True)
class Scale:
    """Everything that sets a study's size. ``job_seconds``: a rough upper bound of one job, used to not start
    a job that cannot finish before the deadline."""

    img_size: int
    model: dict
    pre_epochs: int
    pre_batch: int
    pre_blr: float
    pre_subset: int | None
    ft_epochs: int
    ft_batch: int
    ft_labels: int
    test_subset: int | None
    probe_train: int | None
    probe_lrs: tuple[float, ...]
    probe_epochs: int
    probe_batch: int
    seeds: tuple[int, ...]
    ablation_seeds: tuple[int, ...]
    workers: int
    device: str
    job_seconds: float
    extra: dict = field(default_factory=dict)


SCALES: dict[str, Scale] = {
    # CPU, seconds: checks that every script runs end to end; measures nothing (a 4x4 patch grid: study 2 can
    # only compare 1x1 and 2x2 clusters there)
    "tiny": Scale(img_size=16, model=dict(patch_size=4, embed_dim=16, depth=2, d_state=4, decoder_dim=32,
                                          memory_layers=[1, 2]),
                  pre_epochs=4, pre_batch=32, pre_blr=2e-3, pre_subset=32, ft_epochs=1, ft_batch=32, ft_labels=32,
                  test_subset=32, probe_train=32, probe_lrs=(0.1,), probe_epochs=2, probe_batch=32, seeds=(0,),
                  ablation_seeds=(0,), workers=0, device="cpu", job_seconds=5),
    # one H200 per process: Fashion-MNIST upsampled to 32 px, 4 px patches (8x8 grid), a 192-wide 6-block ARM;
    # 8 pretraining epochs of the 60000 training images (batch 512), fine-tuning on 10000 labels for 15 epochs
    "gpu": Scale(img_size=32, model=dict(patch_size=4, embed_dim=192, depth=6, d_state=16, decoder_dim=256),
                 pre_epochs=8, pre_batch=512, pre_blr=1e-3, pre_subset=None, ft_epochs=15, ft_batch=256,
                 ft_labels=10000, test_subset=None, probe_train=None, probe_lrs=(0.01, 0.03, 0.1, 0.3, 1.0),
                 probe_epochs=20, probe_batch=1024, seeds=(0, 1, 2), ablation_seeds=(0, 1, 2), workers=6,
                 device="cuda", job_seconds=90),
}

def grid_side(scale: Scale) -> int:
    return scale.img_size // scale.model["patch_size"]


BASE = {"cluster_size": 2, "cluster_order": "row", "target": "norm_pix"}
# optim.no_decay of pretraining and fine-tuning: "mamba" (A_log, D and tokens exempt from weight decay) is the rule
# every job ran with before the choice existed, so its keys carry no tag; "reference" (the ARM code's) adds one
NO_DECAY = ("mamba", "reference")


# encoder families: the model name of the fmnist presets' run config (None: the preset's, an ARM with MambaMLP
# blocks) and the job-key part ("" for ARM: the keys of jobs run before there was a choice). A Vim takes the scale's
# geometry (patch, width, depth, state size) with Vim's blocks (expand 2, no MLP) and, as a classifier, Vim's two
# scan directions and class-token feature; its pretraining is ARM's decoder and objective over forward-only blocks.
FAMILIES: dict[str, tuple[str | None, str]] = {"arm": (None, ""), "vim": ("vim_tiny_pz16", "vim-")}


def family_tag(family: str) -> str:
    if family not in FAMILIES:
        raise ValueError(f"encoder family {family!r}: expected one of {', '.join(FAMILIES)}")
    return FAMILIES[family][1]


def _family_name(family: str) -> dict:
    family_tag(family)
    name = FAMILIES[family][0]
    return {} if name is None else {"model.name": name}


def wd_tag(no_decay: str) -> str:
    """The job-key part of a weight decay rule: "" for "mamba" (the keys of jobs run before the choice existed),
    "-wdref" for "reference"."""
    if no_decay not in NO_DECAY:
        raise ValueError(f"weight decay rule {no_decay!r}: expected one of {', '.join(NO_DECAY)}")
    return "" if no_decay == "mamba" else "-wdref"
FRACTIONS = (0.25, 0.5, 0.75, 1.0)  # step checkpoints of every pretraining (study 5 uses 0.25, 0.5, 1.0)


class Pending(Exception):
    """A job (or one it needs) is being run by another process."""


class OutOfTime(Exception):
    """Not enough time before the deadline to start another job."""


def parse_args(description: str, argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--scale", choices=sorted(SCALES), default="tiny")
    p.add_argument("--state", default=None, help="jobs, locks and run directories (default runs/experiments/SCALE)")
    p.add_argument("--out", default=None, help="study JSON and plots (default docs/results for gpu, "
                                               "STATE/results for tiny)")
    p.add_argument("--data-root", default=None, help="Fashion-MNIST folder (default: Debian's)")
    p.add_argument("--deadline", type=float, default=None, help="unix time: start no job that cannot end before")
    p.add_argument("--wait", action="store_true", help="wait for jobs other processes are running, then summarise")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="override the scale's seeds")
    return p.parse_args(argv)


def mean_std(values: list[float]) -> dict:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "std": None, "n": 0, "values": []}
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
            "n": len(vals), "values": vals}


def over_seeds(results: dict, prefix: str, metric: str, seeds) -> dict:
    """:func:`mean_std` of ``metric`` in the jobs ``{prefix}{seed}`` of ``results`` that finished."""
    return mean_std([results[f"{prefix}{s}"][metric] for s in seeds if f"{prefix}{s}" in results])


def pixel_row(results: dict, seeds, prefix: str = "pixels") -> dict:
    """The row a reader knows: the raw-pixel baselines (:meth:`Context.pixel_baselines` jobs) in the study metrics."""
    return {"condition": "raw pixels, no network",
            "ft_top1": over_seeds(results, prefix, "linear_ft_labels_top1", seeds),
            "linprobe": over_seeds(results, prefix, "linear_all_top1", seeds),
            "knn": over_seeds(results, prefix, "knn_top1", seeds)}


class Context:
    """Jobs of one scale: pretrain / finetune / probe, each resumable and shared between studies."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.scale = SCALES[args.scale]
        if args.seeds:
            self.scale = Scale(**{**self.scale.__dict__, "seeds": tuple(args.seeds)})
        self.state = Path(args.state or REPO / "runs" / "experiments" / args.scale)
        self.out = Path(args.out or (REPO / "docs" / "results" if args.scale == "gpu" else self.state / "results"))
        # job results live with the study results (small JSON files that travel with the working tree);
        # locks and run directories (checkpoints) stay in the state folder
        self.jobs = self.out / "jobs"
        for d in (self.state / "locks", self.state / "runs", self.jobs):
            d.mkdir(parents=True, exist_ok=True)
        self.deadline = args.deadline
        self.device = self.scale.device if (self.scale.device != "cuda" or torch.cuda.is_available()) else "cpu"
        # data loader processes per job: the scale's, or EXPERIMENTS_DATA_WORKERS (run_gpu.sh sets it when several
        # job processes share a machine's cores)
        self.workers = int(os.environ.get("EXPERIMENTS_DATA_WORKERS", self.scale.workers))
        # the longest a job may take, for the deadline: the scale's, or EXPERIMENTS_JOB_SECONDS (jobs sharing a GPU
        # take longer)
        self.job_seconds = float(os.environ.get("EXPERIMENTS_JOB_SECONDS", self.scale.job_seconds))

    # -- job bookkeeping --------------------------------------------------------------------------------
    def _job(self, key: str, fn: Callable[[], dict], valid: Callable[[dict], bool] = lambda r: True) -> dict:
        path = self.jobs / f"{key}.json"
        if path.is_file():
            result = json.loads(path.read_text())
            if valid(result):
                return result
        with open(self.state / "locks" / f"{key}.lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise Pending(key) from None
            if path.is_file():  # finished by another process while we looked
                result = json.loads(path.read_text())
                if valid(result):
                    return result
            if self.deadline is not None and time.time() + self.job_seconds > self.deadline:
                raise OutOfTime(key)
            _logger.info("job %s", key)
            t0 = time.time()
            result = {"key": key, **fn(), "job_seconds": round(time.time() - t0, 1)}
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(result, indent=2) + "\n")
            os.replace(tmp, path)
            return result

    def _common(self, seed: int, run: str) -> dict[str, Any]:
        s = self.scale
        return {"seed": seed, "device": self.device, "data.root": self.args.data_root, "data.workers": self.workers,
                "data.persistent_workers": self.workers > 0, "model.img_size": s.img_size, "log.tensorboard": False,
                "log.progress": "off", "resume": "auto", "output_dir": str(self.state / "runs" / run)}

    # -- pretraining ------------------------------------------------------------------------------------
    def pretrain_config(self, cond: dict, seed: int, no_decay: str = "mamba", family: str = "arm"):
        s = self.scale
        key = self.pretrain_key(cond, seed, no_decay, family)
        every = max(1, s.pre_epochs // 4)
        return load_config("fmnist_pretrain", {
            **self._common(seed, key), **_family_name(family), "model.args": {**s.model, **cond},
            "optim.no_decay": no_decay,
            "optim.epochs": s.pre_epochs,
            "optim.warmup_epochs": max(0.5, s.pre_epochs / 16), "optim.batch_size": s.pre_batch,
            "optim.blr": s.pre_blr, "data.train_subset": s.pre_subset, "checkpoint.every_epochs": every,
            "checkpoint.keep_last": 4}, task="pretrain")

    @staticmethod
    def pretrain_key(cond: dict, seed: int, no_decay: str = "mamba", family: str = "arm") -> str:
        c = {**BASE, **cond}
        return (f"pre-{family_tag(family)}cs{c['cluster_size']}-{c['cluster_order']}-{c['target']}{wd_tag(no_decay)}"
                f"-s{seed}")

    def pretrain(self, cond: dict, seed: int, need_checkpoints: bool = True, no_decay: str = "mamba",
                 family: str = "arm") -> dict:
        """Pretrain (or reuse); result: loss, time and the step checkpoints at 25/50/75/100 % of the schedule.
        ``need_checkpoints=False`` (a study's summary, which reads the loss only) reuses a finished job whose
        checkpoints are gone (another machine); a fine-tuning or probe that needs them reruns it. ``no_decay``:
        the weight decay rule (:data:`NO_DECAY`); ``family``: the encoder's (:data:`FAMILIES`)."""
        cond = {**BASE, **cond}
        cfg = self.pretrain_config(cond, seed, no_decay, family)
        key = self.pretrain_key(cond, seed, no_decay, family)

        def run() -> dict:
            summary = pretrain(cfg)
            steps = sorted((self.state / "runs" / key / "checkpoints").glob("step_*"))
            ckpts = {f"{f:g}": str(p) for f, p in zip(FRACTIONS, steps[-len(FRACTIONS):])}
            tail = [v for _, v in summary["loss_curve"]][-5:]
            return {"kind": "pretrain", "condition": cond, "seed": seed, "no_decay": no_decay, "family": family,
                    "steps": summary["steps"],
                    "loss_last": statistics.fmean(tail) if tail else None, "wall_seconds": summary["wall_seconds"],
                    "checkpoints": ckpts, "device": summary["device"], "gpu": _gpu_name()}

        return self._job(key, run,
                         valid=lambda r: not need_checkpoints
                         or all(Path(p).is_dir() for p in r.get("checkpoints", {}).values()))

    # -- fine-tuning ------------------------------------------------------------------------------------
    def finetune(self, seed: int, init: tuple[dict, float] | None, no_decay: str = "mamba", family: str = "arm") -> dict:
        """Fine-tune on ``ft_labels`` labels from a pretraining (condition, fraction) or from scratch; ``no_decay``:
        the weight decay rule of the fine-tuning and of the pretraining it starts from; ``family``: the encoder's."""
        s = self.scale
        if init is None:
            key, extra = f"ft-{family_tag(family)}scratch{wd_tag(no_decay)}-s{seed}", {"optim.layer_decay": None}
        else:
            key, extra = f"ft-{self.pretrain_key(init[0], seed, no_decay, family)[4:]}-f{init[1]:g}", {}
        model_args = {k: v for k, v in s.model.items() if k in ("patch_size", "embed_dim", "depth", "d_state")}

        def run() -> dict:
            # the pretraining is resolved only when this job runs: a finished job needs no checkpoints
            init_path = None if init is None else \
                self.pretrain(init[0], seed, no_decay=no_decay, family=family)["checkpoints"][f"{init[1]:g}"]
            cfg = load_config("fmnist_finetune", {
                **self._common(seed, key), **_family_name(family), "model.args": model_args, "init": init_path, "optim.no_decay": no_decay,
                "optim.epochs": s.ft_epochs,
                "optim.warmup_epochs": max(0.2, s.ft_epochs / 10), "optim.batch_size": s.ft_batch,
                "data.train_subset": s.ft_labels, "data.val_subset": s.test_subset, "checkpoint.every_epochs": 0,
                "checkpoint.keep_last": 1, **extra}, task="finetune")
            summary = finetune(cfg)
            ev = summary.get("eval") or {}
            return {"kind": "finetune", "init": init_path, "seed": seed, "no_decay": no_decay, "family": family,
                    "steps": summary["steps"],
                    "top1": ev.get("top1"), "ema_top1": ev.get("ema_top1"), "top5": ev.get("top5"),
                    "wall_seconds": summary["wall_seconds"], "device": summary["device"], "gpu": _gpu_name()}

        return self._job(key, run)

    # -- frozen-feature probes --------------------------------------------------------------------------
    def probe(self, cond: dict, seed: int, fraction: float | None = 1.0, no_decay: str = "mamba",
              family: str = "arm") -> dict:
        """Linear probe and k-NN of the pretrained encoder (``fraction`` of its schedule, pretrained with the weight
        decay rule ``no_decay``), or of a randomly initialised one (``fraction=None``; no training, so one job
        whatever ``no_decay``) built from the same config."""
        from armvision.analysis import KnnSettings, LinearProbeSettings, load_for_analysis, probe_model
        from armvision.train import build_model_from_config

        s = self.scale
        cond = {**BASE, **cond}
        if fraction is None:
            no_decay = "mamba"
            key = f"probe-random-{self.pretrain_key(cond, seed, family=family)[4:]}"
        else:
            key = f"probe-{self.pretrain_key(cond, seed, no_decay, family)[4:]}-f{fraction:g}"
        cfg = self.pretrain_config(cond, seed, no_decay, family)

        def run() -> dict:
            if fraction is None:
                torch.manual_seed(seed)
                model = build_model_from_config(cfg).to(self.device)
            else:
                pre = self.pretrain(cond, seed, no_decay=no_decay, family=family)
                model = load_for_analysis(pre["checkpoints"][f"{fraction:g}"], self.device).model
            r = probe_model(model, cfg, linprobe=LinearProbeSettings(s.probe_lrs, s.probe_epochs, s.probe_batch),
                            knn=KnnSettings(), train_split="train", test_split="test", train_subset=s.probe_train,
                            test_subset=s.test_subset, batch_size=s.probe_batch, workers=self.workers,
                            device=self.device, seed=seed)
            lp, knn = r["linear_probe"], r["knn"]
            return {"kind": "probe", "condition": cond, "seed": seed, "fraction": fraction, "family": family,
                    **({} if fraction is None else {"no_decay": no_decay}),
                    "linear_probe": lp, "linprobe_top1": lp["best"]["test_top1"], "knn": knn,
                    "knn_top1": knn["top1"], "gpu": _gpu_name()}

        return self._job(key, run)

    # -- a baseline without a network --------------------------------------------------------------------
    def pixel_baselines(self, seed: int) -> dict:
        """What raw pixels give, on the CPU: a linear classifier on the fine-tuning runs' own ``ft_labels``
        labelled images (the fine-tuning column's yardstick) and on all training images (the linear probe's),
        and the same weighted k-NN as the probes on raw pixel vectors (28x28: upsampling adds nothing)."""
        from armvision.analysis import knn_classify
        from armvision.analysis.baseline import fashion_mnist_pixels, pixel_linear_baseline

        s, root = self.scale, self.args.data_root

        def run() -> dict:
            few = pixel_linear_baseline(root, s.ft_labels, 0, seed, test_subset=s.test_subset)
            full = pixel_linear_baseline(root, s.probe_train, 0, seed, test_subset=s.test_subset)
            x, y = fashion_mnist_pixels(root, "train", s.probe_train, 0)
            xt, yt = fashion_mnist_pixels(root, "test", s.test_subset, 0)
            knn = knn_classify(x, y, xt, yt)
            return {"kind": "pixels", "seed": seed, "linear_ft_labels_top1": few["top1"], "linear_ft_labels": few,
                    "linear_all_top1": full["top1"], "linear_all": full, "knn_top1": knn.top1, "knn": knn.as_dict()}

        return self._job(f"baseline-pixels-s{seed}", run)

    # -- running a study --------------------------------------------------------------------------------
    def run_tasks(self, tasks: dict[str, Callable[[], dict]]) -> dict[str, dict]:
        """Run every task that can run; with ``--wait``, wait for those others are running. Returns the results
        of the finished ones (a study is summarised from whatever is finished)."""
        results: dict[str, dict] = {}
        todo = dict(tasks)
        late: list[str] = []
        while todo:
            blocked = {}
            for name, fn in todo.items():
                try:
                    results[name] = fn()
                except Pending:
                    blocked[name] = fn
                except OutOfTime:
                    late.append(name)
            todo = blocked
            if late:
                _logger.info("deadline near: not started %s (run again to resume)", ", ".join(late))
            if not todo or not self.args.wait or late:
                break
            if self.deadline is not None and time.time() > self.deadline:
                break
            time.sleep(5)
        if todo:
            _logger.info("%d job(s) run by other processes, not finished yet: %s", len(todo), ", ".join(todo))
        return results

    def write_study(self, name: str, study: dict, plot: Callable[[dict, Path], None] | None = None) -> Path:
        study = {**study, "scale": self.args.scale, "scale_settings": _jsonable(self.scale.__dict__),
                 "gpu": _gpu_name(), "written": time.strftime("%Y-%m-%d %H:%M:%S")}
        path = self.out / f"{name}.json"
        tmp = self.out / f".{name}.{os.getpid()}.tmp"  # several workers may summarise at once: write, then rename
        tmp.write_text(json.dumps(study, indent=2) + "\n")
        os.replace(tmp, path)
        if plot is not None and study.get("rows"):
            tmp_png = self.out / f".{name}.{os.getpid()}.png"
            plot(study, tmp_png)
            os.replace(tmp_png, self.out / f"{name}.png")
        print(format_table(study))
        return path


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=list))


def _gpu_name() -> str | None:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


def format_table(study: dict) -> str:
    """A study's rows as a Markdown table: one column per metric, mean ± std (n)."""
    metrics = study["metrics"]
    lines = ["| condition | " + " | ".join(metrics.values()) + " |", "|---" * (len(metrics) + 1) + "|"]
    for row in study["rows"]:
        if row.get("skipped"):
            lines.append(f"| {row['condition']} | " + " | ".join(["-"] * len(metrics)) + f" |  ({row['skipped']})")
            continue
        cells = []
        for m in metrics:
            v = row.get(m) or {}
            if v.get("mean") is None:
                cells.append("to be filled by the GPU run")
            elif v["n"] > 1:
                cells.append(f"{v['mean']:.2f} ± {v['std']:.2f} (n={v['n']})")
            else:
                cells.append(f"{v['mean']:.2f}" + (" (n=1)" if m != "loss" else ""))
        lines.append(f"| {row['condition']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bar_plot(study: dict, path: Path) -> None:
    """One panel per metric: a bar per condition, mean with a ±std error bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in study["metrics"] if m != "loss"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.0), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        rows = [r for r in study["rows"] if not r.get("skipped")]
        names = [r["condition"] for r in rows]
        means = [(r.get(m) or {}).get("mean") or 0.0 for r in rows]
        stds = [(r.get(m) or {}).get("std") or 0.0 for r in rows]
        ax.bar(range(len(names)), means, yerr=stds, capsize=3, color="tab:blue")
        ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=7)
        ax.set_title(study["metrics"][m], fontsize=8)
        lo = min([v for v in means if v > 0] or [0.0])
        ax.set_ylim(max(0.0, math.floor(lo - 10)), min(100.0, max(means + [1.0]) + 3))
    fig.suptitle(study["title"], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("armvision").setLevel(logging.WARNING)
