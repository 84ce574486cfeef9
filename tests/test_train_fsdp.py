"""FSDP2 (parallel fsdp) on 2 CPU processes (gloo), sharded DCP checkpoints, export, activation checkpointing.

torch 2.14 runs ``fully_shard`` on the CPU with gloo, so these run in CI; the GPU measurements are
benchmarks/scaling.py.
"""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from trainhelpers import make_imagefolder, run_group, tiny_overrides

import armvision
from armvision.cli import main as cli_main
from armvision.errors import ConfigError
from armvision.models import create_model
from armvision.train import CheckpointManager, Trainer, load_config
from armvision.train.checkpoint import resolve_resume_dir
from armvision.train.parallel import apply_activation_checkpointing
from armvision.train.sharded import MARKER_NAME, is_sharded_checkpoint

HERE = Path(__file__).parent
SRC = str(Path(armvision.__file__).resolve().parents[1])
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, str(HERE)]), "OMP_NUM_THREADS": "1"}
# deterministic crops (the whole 20x20 image resized to 16), so that 1 and 2 processes see the same pixels
# a small clip norm, so that clipping (over the shards of all processes) changes the gradients
SAME_PIXELS = {"aug.scale": [1.0, 1.0], "aug.ratio": [1.0, 1.0], "aug.hflip": 0.0, "optim.clip_grad": 0.05}


def _overrides(data: Path, run: Path, **extra) -> dict:
    # 9 validation images: 5 on one process (3 batches of 2) and 4 on the other (2): evaluation is not a
    # collective of equal steps
    return tiny_overrides(data, run, "pretrain", **{**SAME_PIXELS, "data.val_subset": 9, **extra})


def _worker(over: dict, out: Path, nproc: int, *extra: str) -> subprocess.CompletedProcess:
    out.mkdir(parents=True, exist_ok=True)
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)] \
        if nproc > 1 else [sys.executable]
    cmd = [*launch, str(HERE / "fsdp_worker.py"), json.dumps(over), str(out), *extra]
    return run_group(cmd, ENV, timeout=300)


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    """One pretraining run of 2 epochs x 3 steps on 2 gloo processes, FSDP2 + activation checkpointing,
    micro-batches of 2 accumulated twice per process (global batch 8)."""
    tmp = tmp_path_factory.mktemp("fsdp")
    data = make_imagefolder(tmp / "data")
    over = _overrides(data, tmp / "run2", parallel="fsdp", activation_checkpointing=True,
                      **{"optim.micro_batch": 2})
    res = _worker(over, tmp / "out2", 2)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return {"tmp": tmp, "data": data, "run": tmp / "run2", "out": tmp / "out2",
            "summary": json.loads((tmp / "out2" / "summary.json").read_text()),
            "weights": load_file(tmp / "out2" / "model.safetensors")}


@pytest.fixture(scope="module")
def ref_run(fsdp_run):
    """The same run in one process: the plain model, no activation checkpointing nor accumulation (DDP's
    checkpoint format)."""
    run = fsdp_run["tmp"] / "run1"
    t = Trainer(load_config("fmnist_pretrain", _overrides(fsdp_run["data"], run), task="pretrain"))
    summary = t.fit()
    return {"run": run, "summary": summary, "weights": {k: v.detach().clone() for k, v in t.model.state_dict().items()}}


def _close(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst < atol, worst


def _losses(summary: dict) -> list[float]:
    return [v for _, v in summary["loss_curve"]]


def test_fsdp_on_two_processes_matches_one_process_with_the_same_global_batch(fsdp_run, ref_run):
    s2 = fsdp_run["summary"]
    assert s2["processes"] == 2 and s2["steps"] == 6 and s2["images_seen"] == 48
    ckpts = sorted(p.name for p in (fsdp_run["run"] / "checkpoints").glob("step_*"))
    assert ckpts == ["step_00000003", "step_00000006"]
    assert all(is_sharded_checkpoint(fsdp_run["run"] / "checkpoints" / c) for c in ckpts)
    assert not (fsdp_run["run"] / "checkpoints" / "latest" / "model.safetensors").exists()  # never gathered
    marker = json.loads((fsdp_run["run"] / "checkpoints" / "latest" / MARKER_NAME).read_text())
    assert marker["world_size"] == 2
    s1 = ref_run["summary"]
    assert s1["steps"] == 6
    assert _losses(s1) == pytest.approx(_losses(s2), rel=1e-5, abs=1e-6)
    _close(ref_run["weights"], fsdp_run["weights"], 1e-4)
    assert s1["eval"]["images"] == s2["eval"]["images"] == 9
    assert s2["eval"]["loss"] == pytest.approx(s1["eval"]["loss"], rel=1e-5)
    assert _losses(s1)[0] != _losses(s1)[-1]  # it trained
    records = [json.loads(line) for line in (ref_run["run"] / "metrics.jsonl").read_text().splitlines()]
    norms = [r["grad_norm"] for r in records if r["kind"] == "train"]
    assert len(norms) == 6 and min(norms) > 0.05  # every step was clipped


def test_a_ddp_checkpoint_resumes_sharded_on_two_processes(fsdp_run, ref_run, tmp_path):
    ckpt = ref_run["run"] / "checkpoints" / "step_00000003"
    assert (ckpt / "model.safetensors").is_file()
    over = _overrides(fsdp_run["data"], tmp_path / "run", parallel="fsdp", resume=str(ckpt))
    res = _worker(over, tmp_path / "out", 2)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["steps"] == 6 and _losses(s) == pytest.approx(_losses(ref_run["summary"]), rel=1e-5, abs=1e-6)
    _close(load_file(tmp_path / "out" / "model.safetensors"), ref_run["weights"], 1e-4)


def test_a_sharded_checkpoint_of_two_processes_resumes_in_one_process(fsdp_run, tmp_path):
    ckpt = fsdp_run["run"] / "checkpoints" / "step_00000003"
    assert resolve_resume_dir(ckpt) == ckpt
    over = _overrides(fsdp_run["data"], tmp_path / "run", parallel="fsdp", resume=str(ckpt))
    t = Trainer(load_config("fmnist_pretrain", over, task="pretrain"))
    assert (t.step, t.epoch, t.batch_in_epoch, t.accum_steps) == (3, 1, 0, 1)
    states = [t.optimizer.state[p] for p in t.params]
    assert all(float(s["step"]) == 3 for s in states) and any(s["exp_avg_sq"].abs().sum() > 0 for s in states)
    s = t.fit()
    # steps 4..6 as the 2-process run made them, and the same final weights
    assert _losses(s) == pytest.approx(_losses(fsdp_run["summary"]), rel=1e-5, abs=1e-6)
    _close(t.model.state_dict(), fsdp_run["weights"], 1e-4)
    assert is_sharded_checkpoint(CheckpointManager(tmp_path / "run").latest())  # the run goes on sharded


def test_export_of_a_sharded_checkpoint_equals_the_models_state_dict(fsdp_run, tmp_path, capsys):
    out = tmp_path / "model"
    assert cli_main(["export", str(fsdp_run["run"]), str(out)]) == 0
    assert "step_00000006" in capsys.readouterr().out
    exported = load_file(out / "model.safetensors")
    held = fsdp_run["weights"]
    assert exported.keys() == held.keys() and all(torch.equal(exported[k], held[k]) for k in held)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architecture"] == "ARMPretrain" and cfg["step"] == 6 and cfg["training"]["parallel"] == "fsdp"
    model = armvision.load_model(out)
    assert all(torch.equal(v, held[k]) for k, v in model.state_dict().items())
    # a plain model directory exports to the same weights
    again = tmp_path / "again"
    assert cli_main(["export", str(out), str(again)]) == 0
    assert all(torch.equal(load_file(again / "model.safetensors")[k], held[k]) for k in held)


def test_export_and_eval_errors_are_one_line(fsdp_run, tmp_path, capsys):
    assert cli_main(["export", str(tmp_path / "nothing"), str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("armvision export: error:") and "does not exist" in err and err.count("\n") == 1
    assert cli_main(["eval", str(fsdp_run["run"])]) == 2
    assert "armvision export" in capsys.readouterr().err
    taken = tmp_path / "a_file"
    taken.write_text("x")
    assert cli_main(["export", str(fsdp_run["run"]), str(taken)]) == 2  # OUT_DIR names an existing file
    err = capsys.readouterr().err
    assert err == f"armvision export: error: OUT_DIR {taken} is an existing file; choose a directory\n"


def test_a_kill_during_a_sharded_save_leaves_the_previous_checkpoint_as_latest(fsdp_run, tmp_path):
    run = tmp_path / "run"
    over = _overrides(fsdp_run["data"], run, parallel="fsdp")
    res = _worker(over, tmp_path / "out", 1, "2")  # dies after writing the shards of its 2nd checkpoint
    assert res.returncode == 3, res.stdout[-3000:] + res.stderr[-3000:]
    ckpts = run / "checkpoints"
    partial = [p for p in ckpts.iterdir() if p.name.startswith(".tmp-step_00000006")]
    assert len(partial) == 1 and (partial[0] / "sharded" / ".metadata").is_file()  # shards were written
    assert CheckpointManager(run).latest().name == "step_00000003"
    assert resolve_resume_dir(run).name == "step_00000003"
    assert [p.name for p in CheckpointManager(run).steps()] == ["step_00000003"]
    t = Trainer(load_config("fmnist_pretrain", {**over, "resume": "auto"}, task="pretrain"))
    assert t.step == 3 and not partial[0].exists()  # the partial save is cleared
    assert t.fit()["steps"] == 6 and CheckpointManager(run).latest().name == "step_00000006"


@pytest.mark.parametrize("kind", ["pretrain", "classifier"])
def test_activation_checkpointing_gives_the_same_gradients(kind):
    torch.manual_seed(0)
    args = dict(img_size=16, patch_size=4, embed_dim=32, depth=6, d_state=4, backend="torch")
    if kind == "pretrain":
        model = create_model("arm_tiny_pz16", pretraining=True, cluster_size=2, decoder_dim=32, **args)
    else:
        model = create_model("arm_tiny_pz16", num_classes=5, **args)
    wrapped = copy.deepcopy(model)
    apply_activation_checkpointing(wrapped)
    assert "_checkpoint_wrapped_module" in next(n for n, _ in wrapped.named_parameters() if ".layers." in f".{n}")
    assert wrapped.state_dict().keys() == model.state_dict().keys()  # checkpoints keep their names
    x = torch.randn(2, 3, 16, 16)
    grads = []
    for m in (model, wrapped):
        out = m(x)
        (out if out.dim() == 0 else out.square().mean()).backward()
        grads.append({n.replace("._checkpoint_wrapped_module", ""): p.grad for n, p in m.named_parameters()
                      if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for n, g in grads[0].items():
        torch.testing.assert_close(grads[1][n], g, rtol=1e-6, atol=1e-7, msg=n)


def test_ema_with_fsdp_is_a_config_error():
    with pytest.raises(ConfigError, match="ema.decay.*parallel fsdp"):
        load_config("fmnist_finetune", {"parallel": "fsdp", "ema.decay": 0.99}, task="finetune")
    with pytest.raises(ConfigError, match="parallel"):
        load_config("fmnist_pretrain", {"parallel": "zero3"}, task="pretrain")


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_compiled_training_on_two_processes_matches_the_eager_run(fsdp_run, ref_run, tmp_path, parallel):
    """torch.compile under torchrun (compile_mode auto: torch's default mode with several processes): DDP's
    graph split at its buckets (dynamo's DDPOptimizer) and FSDP2's per-block hooks train as the eager model does.
    The aot_eager backend traces and partitions the graphs as inductor does, without inductor's C++ build."""
    over = _overrides(fsdp_run["data"], tmp_path / "run", parallel=parallel, compile=True,
                      compile_backend="aot_eager")
    res = _worker(over, tmp_path / "out", 2)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["processes"] == 2 and s["steps"] == 6 and s["ran_compiled"]  # no fallback to eager
    assert _losses(s) == pytest.approx(_losses(ref_run["summary"]), rel=1e-5, abs=1e-6)
    _close(load_file(tmp_path / "out" / "model.safetensors"), ref_run["weights"], 1e-4)
