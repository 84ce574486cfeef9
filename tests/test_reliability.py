"""Fault injection: stop signals, damaged checkpoints, divergence, full or read-only disks, file modes.

Each test injects one fault into a tiny run and checks what the user is promised (docs/reliability.md):
an exit status, a one-line message naming the file and the cause, a checkpoint that is intact and good,
and a resumed run identical to one that was never interrupted.
"""

import errno
import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from trainhelpers import as_flags, make_imagefolder, tiny_overrides

from armvision.cli import main
from armvision.train.preemption import EXIT_PREEMPTED


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def run_sub(args, timeout=240, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "armvision", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=timeout, **kw)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp("data") / "shapes")


def pretrain_flags(data, out, **extra):
    over = {"eval_every_epochs": 0, "optim.epochs": 6, "checkpoint.every_epochs": 3, **extra}
    return ["pretrain", "--config", "fmnist_pretrain", *as_flags(tiny_overrides(data, out, "pretrain", **over))]


def final_weights(run: Path) -> dict:
    return load_file(run / "checkpoints" / "latest" / "model.safetensors")


def step_records(run: Path, kind="train") -> list[int]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r["step"] for r in map(json.loads, lines) if r["kind"] == kind]


# ------------------------------------------------------------------------------------------------
# pre-emption
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    res = run_sub(pretrain_flags(data, out))
    assert res.returncode == 0, res.stderr
    return out


@pytest.mark.parametrize("sig,seed", [(signal.SIGTERM, 1), (signal.SIGUSR1, 2)])
def test_a_stop_signal_saves_exits_75_and_the_resumed_run_is_bit_identical(sig, seed, data, reference_run, tmp_path):
    out = tmp_path / "run"
    target = random.Random(seed).randint(2, 12)  # 18 steps in all; checkpoints every 9
    proc = subprocess.Popen([sys.executable, "-m", "armvision", *pretrain_flags(data, out)], stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (out / "metrics.jsonl").is_file() and any(s >= target for s in step_records(out)):
            break
        time.sleep(0.005)
    os.kill(proc.pid, sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_PREEMPTED, err
    assert "Traceback" not in err
    stopped = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert stopped["kind"] == "preempted" and stopped["signal"] == signal.Signals(sig).name
    step = stopped["step"]
    assert target <= step < 18
    assert f"armvision pretrain: stopped by {signal.Signals(sig).name} at step {step}: checkpoint" in err
    assert (out / "checkpoints" / "latest").resolve().name == f"step_{step:08d}"
    assert "--resume auto" in err.splitlines()[-1]
    # resumed: continues from that step to the end, with the same weights as a run never stopped
    res = run_sub(pretrain_flags(data, out) + ["--resume", "auto"])
    assert res.returncode == 0, res.stderr
    assert f"resumed from {out}/checkpoints/step_{step:08d} at step {step}" in res.stderr
    ref, got = final_weights(reference_run), final_weights(out)
    assert ref.keys() == got.keys()
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    # the records: every step once, as in the uninterrupted run
    assert step_records(out) == step_records(reference_run) == list(range(1, 19))


def test_after_a_kill_and_resume_every_step_is_recorded_once(data, tmp_path):
    import csv

    out = tmp_path / "run"
    flags = pretrain_flags(data, out, **{"checkpoint.every_steps": 4})
    proc = subprocess.Popen([sys.executable, "-m", "armvision", *flags], stderr=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (out / "metrics.jsonl").is_file() and any(s >= 6 for s in step_records(out)):
            break
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    killed_at = max(step_records(out))
    saved = int((out / "checkpoints" / "latest").resolve().name[5:])
    assert saved <= killed_at  # (almost always <: records past the checkpoint, which the resumed run logs again)
    res = run_sub(flags + ["--resume", "auto"])
    assert res.returncode == 0, res.stderr
    assert step_records(out) == list(range(1, 19))
    with open(out / "metrics_train.csv", newline="") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == list(range(1, 19))


# ------------------------------------------------------------------------------------------------
# damaged checkpoints
# ------------------------------------------------------------------------------------------------
def short_run(data, out, capsys, **extra):
    over = {"eval_every_epochs": 0, "checkpoint.every_steps": 1, "checkpoint.keep_last": 3, "max_steps": 3, **extra}
    code, _, err = run_cli(pretrain_flags(data, out, **over), capsys)
    assert code == 0, err
    return out / "checkpoints"


@pytest.mark.parametrize("damage", ["truncated", "garbage", "flipped"])
def test_resume_auto_passes_over_a_damaged_latest_checkpoint(damage, data, tmp_path, capsys):
    ckpts = short_run(data, tmp_path / "run", capsys)
    bad = ckpts / "step_00000003" / "model.safetensors"
    raw = bad.read_bytes()
    if damage == "truncated":
        bad.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        bad.write_bytes(b"not safetensors at all" * 10)
    else:  # same size, one byte changed: only the checksum sees it
        bad.write_bytes(raw[:-5] + bytes([raw[-5] ^ 1]) + raw[-4:])
    code, _, err = run_cli(pretrain_flags(data, tmp_path / "run", **{"max_steps": 4, "eval_every_epochs": 0})
                           + ["--resume", "auto"], capsys)
    assert code == 0, err
    assert f"resume auto: skipping the damaged checkpoint {ckpts}/step_00000003: {bad}" in err
    assert f"resumed from {ckpts}/step_00000002 at step 2" in err
    # the same damage through eval, convert and --init: one line naming the file
    for args in (["eval", ckpts / "step_00000003"], ["convert", ckpts / "step_00000003", tmp_path / "conv"],
                 ["finetune", "--config", "fmnist_finetune",
                  *as_flags(tiny_overrides(data, tmp_path / "ft", "finetune", init=str(ckpts / "step_00000003")))]):
        code, _, err = run_cli(args, capsys)
        assert code == 2, (args, err)
        assert err.startswith(f"armvision {args[0]}: error:") and err.count("\n") == 1 and str(bad) in err, err


def test_every_checkpoint_records_sizes_and_checksums(data, tmp_path, capsys):
    from armvision.models.manifest import file_digest

    ckpt = short_run(data, tmp_path / "run", capsys, max_steps=1) / "step_00000001"
    files = json.loads((ckpt / "manifest.json").read_text())["files"]
    assert sorted(files) == ["config.json", "metrics.json", "model.safetensors", "training_state.pt"]
    for name, entry in files.items():
        assert entry == {"size": (ckpt / name).stat().st_size, "sha256": file_digest(ckpt / name)}


# ------------------------------------------------------------------------------------------------
# divergence
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", ["pretrain", "finetune"])
def test_an_lr_blow_up_names_a_finite_good_checkpoint_and_a_sane_lr_continues_from_it(task, data, tmp_path, capsys):
    out = tmp_path / "run"
    over = {"eval_every_epochs": 0, "checkpoint.every_steps": 1, "checkpoint.keep_last": 3, "optim.epochs": 4}
    flags = [task, "--config", f"fmnist_{task}", *as_flags(tiny_overrides(data, out, task, **over))]
    code, _, err = run_cli(flags + ["--max_steps", "4"], capsys)
    assert code == 0, err
    code, _, err = run_cli(flags + ["--resume", "auto", "--optim.lr", "1e30"], capsys)
    assert code == 2
    assert "Traceback" not in err and err.splitlines()[-1].startswith(f"armvision {task}: error: the ")
    good = out / "checkpoints" / "step_00000004"
    assert f"the last good checkpoint, {good}, is intact" in err
    for name in ("model.safetensors", "ema/model.safetensors") if task == "finetune" else ("model.safetensors",):
        weights = load_file(good / name)
        assert max(float(v.abs().max()) for v in weights.values()) < 100
    state = torch.load(good / "training_state.pt", weights_only=True)["optimizer"]["state"]
    assert all(torch.isfinite(t).all() for st in state.values() for t in st.values())
    # the blown-up checkpoints are out of the way: --resume auto takes the good one, and a sane lr goes on
    assert (out / "checkpoints" / "latest").resolve() == good.resolve()
    assert not [d for d in (out / "checkpoints").iterdir() if d.name.startswith("step_") and d.name > good.name]
    code, _, err = run_cli(flags + ["--resume", "auto", "--optim.lr", "1e-4"], capsys)
    assert code == 0, err
    assert f"resumed from {good} at step 4" in err
    final = load_file(out / "checkpoints" / "latest" / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in final.values())



def test_exploding_losses_do_not_make_a_checkpoint_good(data, tmp_path, capsys):
    """lr 1.0 from the start: the losses climb for a few steps (1.27 -> 164 -> 813 -> 128) before they become
    NaN. Judged against the recent average, the checkpoint before the 128 looked good (128 < 3 x 326); judged
    against the best smoothed loss so far (1.27), none is, and the run says so."""
    out = tmp_path / "run"
    over = {"eval_every_epochs": 0, "checkpoint.every_steps": 1, "checkpoint.keep_last": 20, "max_steps": 8,
            "optim.lr": 1.0, "optim.warmup_epochs": 0}
    code, _, err = run_cli(pretrain_flags(data, out, **over), capsys)
    assert code == 2 and "no checkpoint with good weights had been saved" in err.splitlines()[-1], err
    losses = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
              if r["kind"] == "train"]
    assert losses[0] < 2 and max(losses[1:]) > 50 * losses[0]  # it did explode before the NaN
    healths = [json.loads((d / "health.json").read_text()) for d in sorted((out / "checkpoints").iterdir())
               if (d / "health.json").is_file()]
    assert len(healths) >= 3 and not any(h["good"] for h in healths)
    assert all(h["baseline_loss"] == pytest.approx(losses[0]) for h in healths)
    assert not (out / "checkpoints" / "latest").exists()



@pytest.mark.parametrize("change, message", [
    ({"model.args": {"patch_size": 4, "embed_dim": 48, "depth": 6, "d_state": 4, "cluster_size": 2,
                     "decoder_dim": 32}}, "model.args.embed_dim: 32 in the checkpoint, 48 now"),
    ({"model.img_size": 32}, "model.img_size: 16 in the checkpoint, 32 now"),
    ({"data.dataset": "fashion_mnist"}, "data.dataset: imagefolder in the checkpoint, fashion_mnist now"),
    ("finetune", "task: pretrain in the checkpoint, finetune now"),
])
def test_resuming_with_another_model_task_or_dataset_names_the_mismatch_in_one_line(change, message, data, tmp_path,
                                                                                       capsys):
    out = tmp_path / "run"
    short_run(data, out, capsys, max_steps=1)
    if change == "finetune":
        flags = ["finetune", "--config", "fmnist_finetune",
                 *as_flags(tiny_overrides(data, out, "finetune", **{"eval_every_epochs": 0}))]
    else:
        flags = pretrain_flags(data, out, **{"eval_every_epochs": 0, "max_steps": 2, **change})
    code, _, err = run_cli(flags + ["--resume", "auto"], capsys)
    assert code == 2 and err.count("\n") == 1 and len(err) < 600, err
    assert err.startswith(f"armvision {flags[0]}: error: cannot resume from {out / 'checkpoints'}/step_00000001: it belongs to "
                          f"another run ({message}") and "start a new run in another --output-dir" in err, err


def test_resuming_with_another_lr_or_data_root_warns_and_is_recorded(data, tmp_path, capsys):
    import shutil

    out = tmp_path / "run"
    short_run(data, out, capsys, max_steps=1)
    moved = shutil.copytree(data, tmp_path / "moved")
    code, _, err = run_cli(pretrain_flags(data, out, **{"eval_every_epochs": 0, "max_steps": 2, "optim.lr": 1e-4,
                                                        "data.root": str(moved)}) + ["--resume", "auto"], capsys)
    assert code == 0, err
    assert f"resuming {out / 'checkpoints'}/step_00000001 with a changed config: data.root {data} -> {moved}; " \
           "optim.lr None -> 0.0001 (recorded in metrics.jsonl and summary.json)" in err
    expected = [{"key": "data.root", "checkpoint": str(data), "now": str(moved)},
                {"key": "optim.lr", "checkpoint": None, "now": 0.0001}]
    records = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "resume"]
    assert len(records) == 1 and records[0]["step"] == 1 and records[0]["changes"] == expected
    resumes = json.loads((out / "summary.json").read_text())["resumes"]
    assert resumes == [{"step": 1, "checkpoint": str(out / "checkpoints" / "step_00000001"), "changes": expected}]


@pytest.mark.parametrize("fused", [False, True])
def test_skip_nonfinite_skips_a_bounded_number_of_steps_without_touching_the_weights(fused, data, tmp_path, capsys,
                                                                                       monkeypatch):
    """Both paths: the foreach AdamW (flag read on the host each step) and the fused one (the update skipped
    on the device through found_inf, the flags read at log steps)."""
    import armvision.train.trainer as tr
    from armvision.models import ARMPretrain

    if fused:
        real = tr.build_optimizer

        def fused_build(model, cfg, *a, **k):
            groups = [{k2: v for k2, v in g.items() if k2 not in ("foreach", "fused")}
                      for g in real(model, cfg, *a, **k).param_groups]
            opt = torch.optim.AdamW(groups, lr=groups[0]["lr"], betas=tuple(cfg.betas), fused=True)
            assert opt.defaults["fused"]
            return opt

        monkeypatch.setattr(tr, "build_optimizer", fused_build)

    forward = ARMPretrain.forward
    calls = {"n": 0}

    def poisoned(self, *a, **k):
        calls["n"] += 1
        y = forward(self, *a, **k)
        return y * float("nan") if calls["n"] in (2, 3) else y

    monkeypatch.setattr(ARMPretrain, "forward", poisoned)
    out = tmp_path / "run"
    code, _, err = run_cli(pretrain_flags(data, out, **{"optim.skip_nonfinite": 2, "max_steps": 4}), capsys)
    assert code == 0, err
    assert "skipped 1 step(s) with a non-finite loss or gradient norm so far (the first at step 2)" in err
    assert all(torch.isfinite(v).all() for v in final_weights(out).values())
    calls["n"] = 0
    code, _, err = run_cli(pretrain_flags(data, tmp_path / "run2", **{"optim.skip_nonfinite": 1, "max_steps": 4}),
                           capsys)
    assert code == 2 and "became nan at step 2" in err


# ------------------------------------------------------------------------------------------------
# disks and permissions
# ------------------------------------------------------------------------------------------------
def test_a_file_size_limit_during_a_save_gives_one_line_and_keeps_the_previous_checkpoint(data, tmp_path, capsys):
    ckpts = short_run(data, tmp_path / "run", capsys, max_steps=2)
    before = {p: p.read_bytes() for p in (ckpts / "step_00000002").rglob("*") if p.is_file()}
    size = (ckpts / "step_00000002" / "model.safetensors").stat().st_size

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, size // 2))

    res = run_sub(pretrain_flags(data, tmp_path / "run", **{"checkpoint.every_steps": 1, "max_steps": 3})
                  + ["--resume", "auto"], preexec_fn=limit)
    assert res.returncode == 2, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("armvision pretrain: error: cannot save checkpoint step_00000003 in ")
    assert "Traceback" not in res.stderr
    assert "the file is larger than the file-size limit" in last
    assert f"the previous checkpoint {ckpts}/step_00000002 stays the latest" in last
    assert (ckpts / "latest").resolve().name == "step_00000002"
    after = {p: p.read_bytes() for p in (ckpts / "step_00000002").rglob("*") if p.is_file()}
    assert after.pop(ckpts / "step_00000002" / "health.json") and after == before  # judged good by the next step
    assert not [p for p in ckpts.iterdir() if p.name.startswith(".tmp")]


@pytest.mark.parametrize("code_", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_a_full_or_read_only_disk_during_a_save_gives_one_line(code_, data, tmp_path, capsys, monkeypatch):
    import armvision.train.checkpoint as ck

    ckpts = short_run(data, tmp_path / "run", capsys, max_steps=2)
    real = ck.torch.save

    def failing(obj, f, *a, **k):
        raise OSError(code_, os.strerror(code_), str(f))

    monkeypatch.setattr(ck.torch, "save", failing)
    code, _, err = run_cli(pretrain_flags(data, tmp_path / "run", **{"checkpoint.every_steps": 1, "max_steps": 3})
                           + ["--resume", "auto"], capsys)
    monkeypatch.setattr(ck.torch, "save", real)
    assert code == 2 and "Traceback" not in err, err
    err = err.splitlines()[-1]
    cause = {errno.ENOSPC: "the disk is full", errno.EROFS: "the file system is read-only",
             errno.EACCES: "permission denied"}[code_]
    assert err.startswith("armvision pretrain: error: cannot save checkpoint step_00000003") and cause in err
    assert (ckpts / "latest").resolve().name == "step_00000002"
    assert not [p for p in ckpts.iterdir() if p.name.startswith(".tmp")]



@pytest.mark.parametrize("writer", ["tensorboard", "jsonl", "csv", "summary"])
def test_a_disk_that_fills_during_training_ends_in_one_line_whatever_the_writer(writer, data, tmp_path, capsys,
                                                                                  monkeypatch):
    """Every writer of the run (TensorBoard's thread, metrics.jsonl, the CSV file, summary.json) fails with
    ENOSPC after the first checkpoint: one line naming the file and the cause, exit 2, the checkpoint intact."""
    import builtins

    import armvision.train.trainer as tr

    out = tmp_path / "run"
    full = {"on": False}

    def enospc(*_a, **_k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if writer == "tensorboard":
        from tensorboard.summary.writer.record_writer import RecordWriter

        real_write = RecordWriter.write
        monkeypatch.setattr(RecordWriter, "write", lambda self, d: enospc() if full["on"] else real_write(self, d))
    elif writer in ("jsonl", "csv"):
        import armvision.train.metrics as mt

        name = "metrics.jsonl" if writer == "jsonl" else "metrics_train.csv"

        class Filling:
            def __init__(self, f):
                self.f = f

            def write(self, text):
                return enospc() if full["on"] else self.f.write(text)

            def __getattr__(self, a):
                return getattr(self.f, a)

        def opening(path, *a, **k):
            f = builtins.open(path, *a, **k)
            return Filling(f) if Path(path).name == name and "r" not in (a[0] if a else k.get("mode", "r")) else f

        monkeypatch.setattr(mt, "open", opening, raising=False)
    else:
        real_aw = tr.atomic_write
        monkeypatch.setattr(tr, "atomic_write",
                            lambda p, w: enospc() if Path(p).name == "summary.json" else real_aw(p, w))
    save = tr.Trainer.save_checkpoint

    def save_then_fill(self, *a, **k):
        path = save(self, *a, **k)
        full["on"] = True
        return path

    monkeypatch.setattr(tr.Trainer, "save_checkpoint", save_then_fill)
    flags = pretrain_flags(data, out, **{"checkpoint.every_steps": 2, "max_steps": 4, "log.tensorboard": True})
    code, _, err = run_cli(flags, capsys)
    assert code == 2 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    target = {"tensorboard": out / "tensorboard", "jsonl": out / "metrics.jsonl", "csv": out / "metrics_train.csv",
              "summary": out / "summary.json"}[writer]
    assert last.startswith(f"armvision pretrain: error: cannot write {target}: the disk is full; the run stops, the last "
                           f"checkpoint {out / 'checkpoints'}/step_"), last
    latest = (out / "checkpoints" / "latest").resolve()
    assert f"{latest} is intact" in last and err.count("armvision pretrain: error") == 1
    from armvision.models.manifest import verify_dir

    assert verify_dir(latest) is None


def test_too_little_free_space_is_found_before_writing(data, tmp_path, capsys, monkeypatch):
    import shutil

    import armvision.train.checkpoint as ck

    monkeypatch.setattr(ck.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 << 30, 10 << 30, 1000))
    code, _, err = run_cli(pretrain_flags(data, tmp_path / "run", max_steps=1), capsys)
    assert code == 2 and "not enough free space (the checkpoint needs about " in err
    assert " MiB plus a 5% margin and 1 MiB, 0.0 MiB free)" in err
    assert not (tmp_path / "run" / "checkpoints").exists() or not list((tmp_path / "run" / "checkpoints").iterdir())


def test_an_output_dir_that_is_a_file_or_unwritable_gives_one_line(data, tmp_path, capsys, monkeypatch):
    f = tmp_path / "afile"
    f.write_text("x")
    code, _, err = run_cli(pretrain_flags(data, f), capsys)
    assert code == 2 and err == f"armvision pretrain: error: --output-dir {f} is an existing file; choose a directory\n"
    real = Path.write_bytes

    def read_only(self, data):
        if self.name.startswith(".write-test"):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", read_only)
    code, _, err = run_cli(pretrain_flags(data, tmp_path / "ro"), capsys)
    assert code == 2 and f"cannot write in the output directory {tmp_path / 'ro'}: the file system is read-only" in err



def test_a_second_run_in_the_same_output_dir_is_refused_and_a_dead_runs_lock_does_not_block(data, tmp_path, capsys):
    """Another process holds the folder's lock: one line naming its pid and host, nothing written; once it is
    killed (SIGKILL: no clean-up), its lock file is left behind but the next run starts."""
    import socket

    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from armvision.train.runlock import RunLock; "
                               f"lock = RunLock({str(out)!r}).acquire(); print('locked', flush=True); time.sleep(600)"],
                              stdout=subprocess.PIPE, text=True, env={**os.environ})
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, _, err = run_cli(pretrain_flags(data, out, max_steps=1), capsys)
        assert code == 2 and err.count("\n") == 1, err
        assert err == (f"armvision pretrain: error: {out} is in use by another run (pid {holder.pid} on host "
                       f"{socket.gethostname()}, started " + err.split(", started ")[1])
        assert "wait for it to end, or choose another --output-dir" in err
        assert sorted(p.name for p in out.iterdir()) == [".armvision.lock"]
    finally:
        holder.kill()
        holder.wait()
    assert (out / ".armvision.lock").is_file()  # stale: its process is dead
    code, _, err = run_cli(pretrain_flags(data, out, max_steps=1), capsys)
    assert code == 0, err
    assert not (out / ".armvision.lock").exists()  # removed at the end
    # released at the end: the same folder can be taken again at once
    from armvision.train.runlock import RunLock

    with RunLock(out) as lock:
        assert lock.held


def test_files_are_written_with_the_users_umask(tmp_path):
    from armvision.models.io import atomic_write

    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "a.txt", lambda p: Path(p).write_text("x"))
        os.umask(0o077)
        atomic_write(tmp_path / "b.txt", lambda p: Path(p).write_text("x"))
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o600



def test_checkpoint_and_feature_files_follow_the_umask(data, tmp_path, capsys):
    """safetensors' save_file creates its file 0600 whatever was there: the mode is set after the write."""
    from armvision.features import FolderFeatures, write_features

    old = os.umask(0o022)
    try:
        ckpt = short_run(data, tmp_path / "run", capsys, max_steps=1) / "step_00000001"
        write_features(FolderFeatures(tensors={"pooled": torch.zeros(2, 3)}, files=["a.png", "b.png"], skipped=[], metadata={}),
                       tmp_path / "f.safetensors")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in [*ckpt.iterdir(), tmp_path / "f.safetensors"] if p.is_file()}
    assert modes["model.safetensors"] == modes["f.safetensors"] == modes["training_state.pt"] == 0o644, modes
    assert set(modes.values()) == {0o644}, modes


# ------------------------------------------------------------------------------------------------
# image formats and bit depths
# ------------------------------------------------------------------------------------------------
def test_every_format_in_a_mixed_folder_is_used_with_correct_pixels(tmp_path, caplog):
    import numpy as np
    from PIL import Image

    from armvision.data import IMAGE_EXTENSIONS, build_dataset, list_images

    rng = np.random.default_rng(0)
    pixels = {}
    for c in ("a", "b"):
        (tmp_path / "train" / c).mkdir(parents=True)
        for ext in (".png", ".jpg", ".webp", ".bmp", ".tif", ".TIFF", ".gif", ".ppm"):
            assert ext.lower() in IMAGE_EXTENSIONS
            arr = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            if ext == ".gif":  # a palette format: one grey level keeps it exact
                arr[:] = arr[0, 0, 0]
            path = tmp_path / "train" / c / f"img{ext}"
            opts = {".webp": {"lossless": True}, ".jpg": {"quality": 100, "subsampling": 0}}.get(ext, {})
            Image.fromarray(arr).save(path, **opts)
            pixels[path.name, c] = arr
        # 16-bit grey: a full-range ramp, stored as PNG and TIFF (Pillow: mode I;16)
        ramp = (np.arange(64, dtype=np.uint32).reshape(8, 8) * 1040).astype(np.uint16)
        for ext in (".png", ".tif"):
            Image.fromarray(ramp).save(tmp_path / "train" / c / f"deep16{ext}")
            pixels[f"deep16{ext}", c] = np.repeat((ramp / 257.0).round().astype(np.uint8)[..., None], 3, axis=2)
        (tmp_path / "train" / c / "notes.txt").write_text("not an image")
    with caplog.at_level("WARNING"):
        ds = build_dataset("imagefolder", str(tmp_path), "train")
    assert "2 file(s) in" in caplog.text and ".txt (2)" in caplog.text
    assert len(ds) == len(pixels) == 20 == len(list_images(tmp_path / "train"))
    for i in range(len(ds)):
        img, label, skipped = ds[i]
        name = Path(ds._filename(i))
        expected = pixels[name.name, name.parent.name]
        got = np.asarray(img)
        assert skipped == () and got.shape == (8, 8, 3)
        if name.suffix == ".jpg":  # lossy
            assert np.abs(got.astype(int) - expected).mean() < 3
        else:
            assert np.array_equal(got, expected), name
    # not clipped: the 16-bit ramp keeps its range and order
    deep = np.asarray(ds[[Path(ds._filename(i)).name for i in range(len(ds))].index("deep16.png")][0])[..., 0]
    assert deep.min() == 0 and deep.max() == round(63 * 1040 / 257) and (np.diff(deep.ravel()) >= 0).all()


@pytest.mark.parametrize("mode,values,expected", [("F", [0.0, 0.5, 1.0], [0, 128, 255]),
                                                  ("I", [0, 32768, 65535], [0, 128, 255]),
                                                  ("I;16", [0, 257, 65535], [0, 1, 255])])
def test_high_bit_depth_images_are_scaled_to_8_bits(mode, values, expected):
    import numpy as np
    from PIL import Image

    from armvision.data.images import convert_image

    dtype = {"F": np.float32, "I": np.int32, "I;16": np.uint16}[mode]
    img = Image.fromarray(np.array([values], dtype=dtype))
    assert img.mode == mode
    assert np.asarray(convert_image(img, "L")).ravel().tolist() == expected
    assert np.asarray(convert_image(img, "RGB"))[0, :, 1].tolist() == expected


def _stop_one_of_two_ranks(data, out):
    """Start a 2-process torchrun pretraining, send SIGUSR1 to one worker after step 3; (stopped record, stderr)."""
    flags = pretrain_flags(data, out, **{"optim.micro_batch": 4, "optim.epochs": 30})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "armvision", *flags], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        return _stop_one_rank(proc, out)
    finally:
        if proc.poll() is None:  # a failed check or a timeout: torchrun's workers must not outlive the test
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _stop_one_rank(proc: subprocess.Popen, out):
    """SIGUSR1 to the second worker of the running launch once step 3 is logged; (stopped step, stderr)."""
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if (out / "metrics.jsonl").is_file() and any(s >= 3 for s in step_records(out)):
            break
        time.sleep(0.01)
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    assert len(children) == 2
    os.kill(int(children[-1]), signal.SIGUSR1)
    _, err = proc.communicate(timeout=180)
    stopped = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert stopped["kind"] == "preempted", err[-3000:]
    step = stopped["step"]
    assert f"stopped by SIGUSR1 at step {step}" in err or f"stopped by a stop signal at step {step}" in err
    assert (out / "checkpoints" / "latest").resolve().name == f"step_{step:08d}"
    assert step < 90
    return step, err


def test_a_stop_signal_to_one_of_two_ranks_stops_both_after_the_same_step(data, tmp_path):
    """torchrun, 2 gloo processes: only one worker gets SIGUSR1; the ranks agree, rank 0 saves, both exit 75.

    Known fault (docs/reliability.md): now and then (about 1 run in 25 on a 2-core CPU) the signalled worker aborts
    in the C++ runtime as its process exits, after the checkpoint is saved ("terminate called without an active
    exception"), and torchrun reports that instead of 75. The scenario then runs once more; two such aborts fail."""
    for attempt in range(2):
        step, err = _stop_one_of_two_ranks(data, tmp_path / f"run{attempt}")
        # torchrun's report: the first worker to end exited with EXIT_PREEMPTED; torchrun may stop the other one
        # (already past its save) before it exits by itself, so only one 75 is certain
        if err.count("exitcode  : 75") >= 1:
            return
        assert "terminate called without an active exception" in err, err[-4000:]
    raise AssertionError("the signalled worker aborted at exit twice:\n" + err[-4000:])
