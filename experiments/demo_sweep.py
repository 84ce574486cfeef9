"""How the embedded demo's test accuracy depends on its schedule: a grid of pretraining and fine-tuning epochs.

The demo (:mod:`armvision.demo`) has to fit about 10 minutes on a 2-core CPU. Its runs go through the ordinary
training code, so their CPU time is about (optimizer steps) x (CPU seconds per step); the steps are known
before a run, the accuracy is not. This script measures the accuracy side on a fast machine, with the demo's
own configs (the fmnist presets + the demo profile's overrides, as :func:`armvision.demo.run_demo` builds
them) and only ``optim.epochs`` changed:

* ``pretrain``: ARM pretraining for E epochs (warm-up as the preset);
* ``probe``: the frozen pretrained encoder under the project's linear probe and weighted k-NN
  (:func:`armvision.analysis.probe_checkpoint`), trained on the demo's labelled images, scored on its test images;
* ``finetune``: fine-tuning from the E-epoch pretraining (``init``, layer-wise lr decay) for F epochs;
* ``scratch``: the same classifier from random weights for F epochs (no layer decay, as the demo's baseline);
* ``pixels``: once, what raw pixels give on the same labelled / test images: the demo's linear classifier
  (:func:`armvision.analysis.baseline.pixel_linear_baseline`) and the probes' k-NN on pixel vectors.

Every finished run appends one JSON line to ``OUT/demo_sweep.jsonl`` (and ``OUT/demo_sweep.md`` is rewritten),
so a run killed at a time limit keeps what finished. The order puts the most informative runs first: the
(E, F) grid grows as a square (round r adds the r-th pretraining length and the r-th fine-tuning length; within
a round fewer total epochs first, more pretraining first at a tie), each pretraining and its probe just before
its first fine-tuning, each from-scratch run right after the first fine-tuning of its length. ``--budget``
starts no run after that many seconds. Each run has its own folder under ``OUT/runs`` (or ``--runs-dir``).

    python experiments/demo_sweep.py --out runs/demo_sweep --budget 210 --cpu-step-seconds 0.27 0.98   # on a GPU
    python experiments/demo_sweep.py --smoke --out /tmp/sweep --device cpu         # a few hundred images, CPU

(0.27 and 0.98 s: the CPU demo's measured seconds per pretraining and per fine-tuning step on 2 idle cores,
docs/analysis.md.)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from armvision.analysis import KnnSettings, LinearProbeSettings, knn_classify, probe_checkpoint  # noqa: E402
from armvision.analysis.baseline import fashion_mnist_pixels, pixel_linear_baseline  # noqa: E402
from armvision.demo.run import stage_config  # noqa: E402
from armvision.errors import ConfigError, Preempted  # noqa: E402
from armvision.models.io import atomic_write  # noqa: E402
from armvision.train import RunConfig, train  # noqa: E402
from armvision.train.config import parse_cli_overrides  # noqa: E402
from armvision.train.preemption import EXIT_PREEMPTED  # noqa: E402

_logger = logging.getLogger("demo_sweep")

PRETRAIN_EPOCHS = (1, 2, 3)
FINETUNE_EPOCHS = (2, 3, 4)
SMOKE_EPOCHS = (1,)  # --smoke: one pretraining epoch, one fine-tuning epoch

JSONL = "demo_sweep.jsonl"
TABLE = "demo_sweep.md"

# every row has these keys (None where they do not apply): the JSONL is a table
ROW_KEYS = ("run", "stage", "pretrain_epochs", "finetune_epochs", "steps", "top1", "ema_top1", "linear_top1",
            "knn_top1", "loss_last", "train_images", "test_images", "wall_seconds", "device", "gpu", "output_dir",
            "error", "detail")

# config keys the sweep sets itself: --set may not change them
_OWN_KEYS = ("task", "output_dir", "init", "seed", "device", "data.root", "data.workers", "optim.epochs",
             "optim.layer_decay")


@dataclass(frozen=True)
class Run:
    """One job of the sweep; ``needs``: the pretraining run it starts from (or probes)."""

    name: str
    stage: str
    pretrain_epochs: int | None = None
    finetune_epochs: int | None = None
    needs: str | None = None


def plan(pretrain_epochs: Sequence[int], finetune_epochs: Sequence[int]) -> list[Run]:
    """The runs in the order they run (see the module docstring: the grid grows as a square, so after every
    round the finished runs are a complete sub-grid of the shortest schedules)."""
    pre, ft = sorted(set(pretrain_epochs)), sorted(set(finetune_epochs))
    points = sorted(((e, f) for e in pre for f in ft),
                    key=lambda p: (max(pre.index(p[0]), ft.index(p[1])), p[0] + p[1], -p[0]))
    runs = [Run("pixels", "pixels")]
    pretrained: set[int] = set()
    scratch: set[int] = set()
    for e, f in points:
        if e not in pretrained:
            runs += [Run(f"pretrain-e{e}", "pretrain", e),
                     Run(f"probe-e{e}", "probe", e, needs=f"pretrain-e{e}")]
            pretrained.add(e)
        runs.append(Run(f"finetune-e{e}-f{f}", "finetune", e, f, needs=f"pretrain-e{e}"))
        if f not in scratch:
            runs.append(Run(f"scratch-f{f}", "scratch", None, f))
            scratch.add(f)
    return runs


def build_configs(runs: Sequence[Run], runs_dir: Path, profile: str, seed: int, device: str,
                  data_root: str | None, workers: int, extra: dict[str, Any]) -> dict[str, RunConfig]:
    """The training configs of the sweep, all resolved (and checked) before anything runs: the demo's
    (:func:`armvision.demo.run.stage_config`, as :func:`armvision.demo.run_demo` builds them) with ``extra``
    (``--set``), seed, device, data root and workers, then the run's own folder and ``optim.epochs``."""
    common = {"seed": seed, "device": device, "data.root": data_root, "data.workers": workers}
    cfgs = {}
    for run in runs:
        if run.stage not in ("pretrain", "finetune", "scratch"):
            continue
        values = {**extra, **common, "output_dir": str(runs_dir / run.name),
                  "optim.epochs": run.pretrain_epochs if run.stage == "pretrain" else run.finetune_epochs}
        if run.stage == "finetune":
            values["init"] = str(runs_dir / run.needs)
        cfgs[run.name] = stage_config(profile, run.stage, values)
    return cfgs


def _gpu_name(device: str) -> str | None:
    return torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else None


def _train_values(cfg: RunConfig) -> dict[str, Any]:
    summary = train(cfg)
    ev = summary.get("eval") or {}
    keep = ("status", "total_steps", "epochs_completed", "images_seen", "wall_seconds", "train_seconds",
            "loss_first", "loss_min", "skipped_images")
    return {"steps": summary["steps"], "top1": ev.get("top1"), "ema_top1": ev.get("ema_top1"),
            "loss_last": summary["loss_last"], "train_images": cfg.data.train_subset or 60000,
            "test_images": ev.get("images"), "device": summary["device"],
            "detail": {**{k: summary.get(k) for k in keep}, "eval": summary.get("eval")}}


def _probe_values(pre_dir: Path, labelled: RunConfig, device: str, workers: int, seed: int) -> dict[str, Any]:
    d = labelled.data
    r = probe_checkpoint(pre_dir, {"data.root": d.root, "data.train_subset": d.train_subset,
                                   "data.subset_seed": d.subset_seed, "data.val_subset": d.val_subset},
                         linprobe=LinearProbeSettings(), knn=KnnSettings(), train_split="train", test_split="test",
                         batch_size=256, workers=workers, device=device, seed=seed)
    lp = r["linear_probe"]
    return {"linear_top1": lp["best"]["test_top1"], "knn_top1": r["knn"]["top1"], "train_images": r["train_images"],
            "test_images": r["test_images"], "device": device,
            "detail": {"linear_probe": lp["best"], "settings": r.get("settings"), "knn": r["knn"],
                       "feature_dim": r["feature_dim"]}}


def _pixel_values(labelled: RunConfig, device: str, seed: int) -> dict[str, Any]:
    d = labelled.data
    lin = pixel_linear_baseline(d.root, d.train_subset, d.subset_seed, seed, test_subset=d.val_subset)
    t0 = time.perf_counter()
    x, y = fashion_mnist_pixels(d.root, "train", d.train_subset, d.subset_seed)
    xt, yt = fashion_mnist_pixels(d.root, "test", d.val_subset, d.subset_seed)
    knn_settings = KnnSettings()  # the probes' k and temperature
    knn = knn_classify(x, y, xt, yt, knn_settings.k, knn_settings.temperature, device=device)
    return {"linear_top1": lin["top1"], "knn_top1": knn.top1, "train_images": lin["labels"],
            "test_images": lin["test_images"], "device": device,
            "detail": {"linear": lin, "knn": {**knn.as_dict(), "seconds": round(time.perf_counter() - t0, 1)}}}


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_table(header: dict[str, Any], runs: Sequence[Run], rows: dict[str, dict],
                 not_run: dict[str, str]) -> str:
    """The sweep as Markdown: every planned run (finished, failed, skipped or not reached), then one line per
    demo configuration (E, F) with what the demo would show, its optimizer steps and (given ``cpu_step_seconds``)
    their CPU minutes."""
    lines = [f"Demo schedule sweep ({header['profile']} profile, seed {header['seed']}) on {header['device_name']}, "
             f"started {header['started']}; {header['labels']} labelled images, {header['test_images']} test "
             f"images; budget {_fmt(header['budget'], '.0f')} s, {header['elapsed']:.0f} s so far",
             "",
             "| run | stage | E | F | steps | top-1 raw | top-1 EMA | linear | k-NN | last loss | wall s | status |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        r = rows.get(run.name)
        if r is None:
            lines.append(f"| {run.name} | {run.stage} | {_fmt(run.pretrain_epochs, 'd')} "
                         f"| {_fmt(run.finetune_epochs, 'd')} | - | - | - | - | - | - | - "
                         f"| {not_run.get(run.name, 'not reached')} |")
            continue
        status = "done" if r["error"] is None else f"failed: {r['error']}"
        lines.append(f"| {run.name} | {run.stage} | {_fmt(r['pretrain_epochs'], 'd')} "
                     f"| {_fmt(r['finetune_epochs'], 'd')} | {_fmt(r['steps'], 'd')} | {_fmt(r['top1'], '.2f')} "
                     f"| {_fmt(r['ema_top1'], '.2f')} | {_fmt(r['linear_top1'], '.2f')} "
                     f"| {_fmt(r['knn_top1'], '.2f')} | {_fmt(r['loss_last'], '.4f')} "
                     f"| {r['wall_seconds']:.1f} | {status} |")
    cpu = header.get("cpu_step_seconds")
    lines += ["", "Per demo configuration: pretraining E epochs, then fine-tuning and from scratch F epochs each "
                  "(the demo's three runs)" + ("" if cpu is None else
                  f"; CPU minutes estimated from the steps at {cpu[0]:g} s per pretraining step and {cpu[1]:g} s "
                  "per fine-tuning step (training steps only: evaluation, the pixel baseline and start-up not "
                  "included)"),
              "", "| E | F | pretraining steps | fine-tuning steps (each run) | est. CPU min "
                  "| fine-tune raw / EMA | scratch raw / EMA | fine-tune - scratch (raw) | probe linear / k-NN |",
              "|---|---|---|---|---|---|---|---|---|"]

    def ok(name: str) -> dict:
        r = rows.get(name)
        return r if r is not None and r["error"] is None else {}

    for run in runs:
        if run.stage != "finetune":
            continue
        pre, ft = ok(f"pretrain-e{run.pretrain_epochs}"), ok(run.name)
        sc, probe = ok(f"scratch-f{run.finetune_epochs}"), ok(f"probe-e{run.pretrain_epochs}")
        ft_steps = ft.get("steps") if ft.get("steps") is not None else sc.get("steps")
        minutes = (None if cpu is None or pre.get("steps") is None or ft_steps is None
                   else (pre["steps"] * cpu[0] + 2 * ft_steps * cpu[1]) / 60)
        gap = ft["top1"] - sc["top1"] if ft.get("top1") is not None and sc.get("top1") is not None else None
        lines.append(f"| {run.pretrain_epochs} | {run.finetune_epochs} | {_fmt(pre.get('steps'), 'd')} "
                     f"| {_fmt(ft_steps, 'd')} | {_fmt(minutes, '.1f')} "
                     f"| {_fmt(ft.get('top1'), '.2f')} / {_fmt(ft.get('ema_top1'), '.2f')} "
                     f"| {_fmt(sc.get('top1'), '.2f')} / {_fmt(sc.get('ema_top1'), '.2f')} | {_fmt(gap, '+.2f')} "
                     f"| {_fmt(probe.get('linear_top1'), '.2f')} / {_fmt(probe.get('knn_top1'), '.2f')} |")
    px = ok("pixels")
    lines += ["", f"raw pixels, no network: linear classifier {_fmt(px.get('linear_top1'), '.2f')}, "
                  f"k-NN {_fmt(px.get('knn_top1'), '.2f')} (same labelled and test images)"]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    def epochs(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            v = 0
        if v < 1:
            raise argparse.ArgumentTypeError(f"epochs must be a whole number >= 1, got {text!r}")
        return v

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/demo_sweep", help="output folder, new or empty (default runs/demo_sweep)")
    p.add_argument("--runs-dir", default=None,
                   help="the runs' own folders (checkpoints, logs), new or empty (default OUT/runs): elsewhere when "
                        "OUT must stay small")
    p.add_argument("--smoke", action="store_true", help="the demo's smoke profile (a few hundred images), one "
                                                        "pretraining and one fine-tuning epoch: checks the script")
    p.add_argument("--pretrain-epochs", type=epochs, nargs="+", default=None,
                   help=f"pretraining lengths (default {' '.join(map(str, PRETRAIN_EPOCHS))}; --smoke: 1)")
    p.add_argument("--finetune-epochs", type=epochs, nargs="+", default=None,
                   help=f"fine-tuning lengths (default {' '.join(map(str, FINETUNE_EPOCHS))}; --smoke: 1)")
    p.add_argument("--budget", type=float, default=None, help="seconds: start no run after this (default: none)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="training and probe device (default cuda if available, else cpu)")
    p.add_argument("--workers", type=int, default=None,
                   help="data loader processes per run (data.workers; default 4, 0 with --smoke)")
    p.add_argument("--cpu-step-seconds", type=float, nargs=2, default=None, metavar=("PRETRAIN", "FINETUNE"),
                   help="measured CPU seconds per pretraining and per fine-tuning step: the table then estimates "
                        "each demo configuration's CPU minutes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", default=None, help="Fashion-MNIST folder (default: Debian's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for every training run (e.g. compile=false); repeatable")
    args = p.parse_args(argv)
    if args.budget is not None and args.budget < 0:
        p.error(f"--budget must be >= 0 seconds, got {args.budget:g}")
    if args.cpu_step_seconds is not None and min(args.cpu_step_seconds) <= 0:
        p.error("--cpu-step-seconds must be two numbers > 0 (seconds per pretraining and per fine-tuning step)")
    if args.workers is not None and args.workers < 0:
        p.error(f"--workers must be >= 0, got {args.workers}")
    return args


def _prepare(out: Path, runs_dir: Path) -> None:
    """Refuse to mix with an earlier sweep (its rows, or run folders a trainer would resume or refuse)."""
    for path, flag in ((out, "--out"), (runs_dir, "--runs-dir")):
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise ConfigError(f"sweep folder {path} exists and is not an empty folder; choose a new or empty {flag}")
    out.mkdir(parents=True, exist_ok=True)
    runs_dir.mkdir(parents=True, exist_ok=True)


def sweep(args: argparse.Namespace) -> dict[str, Any]:
    """Run the sweep; returns ``{"runs", "rows", "not_run", "table"}``. Raises
    :class:`~armvision.errors.Preempted` when a stop signal ended a training (the finished rows are written)."""
    t0 = time.perf_counter()
    out = Path(args.out)
    runs_dir = Path(args.runs_dir) if args.runs_dir else out / "runs"
    profile = "smoke" if args.smoke else "cpu"
    workers = args.workers if args.workers is not None else (0 if args.smoke else 4)
    runs = plan(args.pretrain_epochs or (SMOKE_EPOCHS if args.smoke else PRETRAIN_EPOCHS),
                args.finetune_epochs or (SMOKE_EPOCHS if args.smoke else FINETUNE_EPOCHS))
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {args.device}: no CUDA device is visible here (use --device cpu)")
    extra = parse_cli_overrides(args.overrides)
    owned = sorted(k for k in extra if k in _OWN_KEYS)
    if owned:
        raise ConfigError(f"--set {owned[0]}: the sweep sets this key itself (use its own flag, if any)")
    cfgs = build_configs(runs, runs_dir, profile, args.seed, args.device, args.data_root, workers, extra)
    labelled = next(cfgs[r.name] for r in runs if r.stage == "scratch")  # the demo's labelled and test images
    _prepare(out, runs_dir)
    header = {"profile": profile, "seed": args.seed, "device_name": _gpu_name(args.device) or args.device,
              "started": time.strftime("%Y-%m-%d %H:%M:%S"), "labels": labelled.data.train_subset or 60000,
              "test_images": labelled.data.val_subset or 10000, "budget": args.budget, "elapsed": 0.0,
              "cpu_step_seconds": args.cpu_step_seconds}
    rows: dict[str, dict] = {}
    not_run: dict[str, str] = {}

    def write_table() -> str:
        header["elapsed"] = time.perf_counter() - t0
        table = format_table(header, runs, rows, not_run)
        atomic_write(out / TABLE, lambda p: Path(p).write_text(table + "\n"))
        return table

    write_table()
    (out / JSONL).touch()
    _logger.info("demo sweep: %d runs in this order: %s", len(runs), ", ".join(r.name for r in runs))
    try:
        for run in runs:
            if run.needs is not None and (run.needs not in rows or rows[run.needs]["error"] is not None):
                not_run[run.name] = f"skipped: {run.needs} did not finish"
                continue
            elapsed = time.perf_counter() - t0
            if args.budget is not None and elapsed > args.budget:
                not_run[run.name] = f"skipped: budget ({elapsed:.0f} s > {args.budget:g} s)"
                continue
            _logger.info("run %s (%.0f s into the sweep)", run.name, elapsed)
            run_dir = runs_dir / run.name
            start = time.perf_counter()
            try:
                if run.stage == "pixels":
                    values = _pixel_values(labelled, args.device, args.seed)
                elif run.stage == "probe":
                    values = _probe_values(runs_dir / run.needs, labelled, args.device, workers, args.seed)
                else:
                    values = _train_values(cfgs[run.name])
            except Preempted:
                not_run[run.name] = "stopped by a signal"
                raise
            except Exception as e:  # one failed run must not cost the rest of a one-shot sweep
                _logger.exception("run %s failed", run.name)
                values = {"error": f"{type(e).__name__}: {e}".splitlines()[0]}
            row = {k: None for k in ROW_KEYS}
            row.update(run=run.name, stage=run.stage, pretrain_epochs=run.pretrain_epochs,
                       finetune_epochs=run.finetune_epochs, device=args.device, gpu=_gpu_name(args.device),
                       output_dir=str(run_dir))
            row.update(values)
            row["wall_seconds"] = round(time.perf_counter() - start, 2)
            if run.stage in ("pixels", "probe"):  # their results have no training folder of their own: one here
                run_dir.mkdir(parents=True, exist_ok=True)
                (run_dir / "result.json").write_text(json.dumps(row, indent=2) + "\n")
            with open(out / JSONL, "a") as f:
                f.write(json.dumps(row) + "\n")
                f.flush()
                os.fsync(f.fileno())
            rows[run.name] = row
            write_table()
    finally:
        table = write_table()
    return {"runs": runs, "rows": rows, "not_run": not_run, "table": table}


def main(argv=None) -> int:
    """Exit status: 0 when every run that started finished, 1 when one failed, 2 for bad arguments,
    75 when a stop signal ended a training (the finished rows are kept)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    args = parse_args(argv)
    try:
        result = sweep(args)
    except ConfigError as e:
        print(f"demo_sweep: error: {e}", file=sys.stderr)
        return 2
    except Preempted as e:
        _logger.warning("stopped: %s; the finished runs are in %s", e, Path(args.out) / JSONL)
        return EXIT_PREEMPTED
    print(result["table"])
    return 1 if any(r["error"] is not None for r in result["rows"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
