"""The compiled training path (torch.compile, aot_eager on the CPU: the same graph capture as on a
GPU without inductor's C++ build): the same losses as eager, checkpoints that load into eager models
and resume exactly, one warning and eager training when compiling fails; fused AdamW on CUDA only."""

import logging

import pytest
import torch
from safetensors.torch import load_file
from trainhelpers import make_imagefolder, tiny_overrides

from armvision.train import load_config, train
from armvision.train.compiled import compile_enabled, compile_mode
from armvision.train.optim import build_optimizer
from armvision.train.trainer import Trainer

COMMON = {"optim.epochs": 2, "optim.warmup_epochs": 1, "data.val_split": None, "eval_every_epochs": 0,
          "optim.clip_grad": 1.0}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp("data") / "shapes")


def _cfg(data, out, **extra):
    over = tiny_overrides(data, out, "pretrain", **COMMON, **extra)
    over["model.args"] = dict(over["model.args"], depth=2, memory_layers=[1, 2])  # a short graph to trace
    return load_config("fmnist_pretrain", over, task="pretrain")


def _losses(summary):
    return [v for _, v in summary["loss_curve"]]


@pytest.mark.slow  # ~25-40 s: dynamo traces the tiny model's forward and backward on the CPU
def test_compiled_training_matches_eager_and_its_checkpoints_resume_eagerly(tmp_path, data):
    eager = train(_cfg(data, tmp_path / "eager", compile=False))
    assert eager["steps"] == 6
    trainer = Trainer(_cfg(data, tmp_path / "compiled", compile=True, compile_backend="aot_eager", max_steps=3))
    assert trainer.train_module.is_compiled
    first = trainer.fit()
    assert trainer.train_module.is_compiled and trainer.train_module.verified  # it ran compiled, no fallback
    assert _losses(first) == pytest.approx(_losses(eager)[:3], rel=1e-5, abs=1e-6)
    weights = load_file(tmp_path / "compiled" / "checkpoints" / "latest" / "model.safetensors")
    assert weights and not [k for k in weights if "_orig_mod" in k]  # the eager module's names
    # the compiled run's checkpoint resumes in an eager trainer and ends where the eager run ended
    rest = train(_cfg(data, tmp_path / "compiled", compile=False, resume="auto"))
    assert rest["steps"] == 6 and _losses(rest) == pytest.approx(_losses(eager), rel=1e-5, abs=1e-6)
    a = load_file(tmp_path / "eager" / "checkpoints" / "latest" / "model.safetensors")
    b = load_file(tmp_path / "compiled" / "checkpoints" / "latest" / "model.safetensors")
    assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


def test_a_compile_failure_warns_once_and_trains_eagerly(tmp_path, data, monkeypatch, caplog):
    """torch compiles at the first call: a failure there (simulated) gives one warning, then the
    eager module trains, to the eager run's losses."""
    calls = []

    class Broken(torch.nn.Module):  # what torch.compile returns; compiling "fails" when it is called
        def __init__(self, module):
            super().__init__()
            self.inner = module

        def forward(self, *args, **kwargs):
            calls.append(1)
            raise RuntimeError("backend compiler failed: simulated\nmore lines")

    monkeypatch.setattr(torch, "compile", lambda module, **kw: Broken(module))
    with caplog.at_level(logging.WARNING, logger="armvision.train"):
        summary = train(_cfg(data, tmp_path / "broken", compile=True))
    warnings = [r.getMessage() for r in caplog.records if "torch.compile failed" in r.getMessage()]
    assert len(warnings) == 1 and "simulated" in warnings[0] and "compile: false" in warnings[0]
    assert calls == [1] and summary["steps"] == 6
    eager = train(_cfg(data, tmp_path / "eager", compile=False))
    assert _losses(summary) == pytest.approx(_losses(eager), rel=1e-5, abs=1e-6)


def test_compile_is_on_for_cuda_by_default_and_fused_adamw_there():
    assert compile_enabled("auto", torch.device("cuda", 0)) and not compile_enabled("auto", torch.device("cpu"))
    assert compile_enabled(True, torch.device("cpu")) and not compile_enabled(False, torch.device("cuda"))
    cfg = load_config("fmnist_pretrain", task="pretrain").optim
    model = torch.nn.Linear(3, 2)
    cpu = build_optimizer(model, cfg)
    assert cpu.defaults["foreach"] is True and not cpu.defaults["fused"]
    gpu = build_optimizer(model, cfg, torch.device("cuda", 0))
    assert gpu.defaults["fused"] is True and not gpu.defaults["foreach"]


def test_model_scan_settings_are_the_scan_scope_of_each_step(tmp_path, data):
    """model.scan {states, seg} is the ops.scan_config scope around the step's forward (and backward),
    where a compiled model reads it when it is traced; unset keys keep the kernels' defaults."""
    from armvision import ops

    seen = []
    trainer = Trainer(_cfg(data, tmp_path / "scan", **{"model.scan.states": "save", "model.scan.seg": 2,
                                                       "max_steps": 1}))
    objective = trainer.objective

    def recording(model, images, labels):
        seen.append(ops.current_scan_config())
        return objective(model, images, labels)

    trainer.objective = recording
    trainer.fit()
    assert len(seen) == 1 and seen[0]["states"] == "save" and seen[0]["seg"] == 2
    assert ops.current_scan_config()["seg"] == 1  # the scope ended with the step
    default = Trainer(_cfg(data, tmp_path / "default"))
    with default._scan_scope() as cfg:
        assert cfg == ops.current_scan_config() and cfg["states"] == "recompute" and cfg["seg"] == 1


def test_compile_mode_reaches_torch_compile_and_cuda_graph_modes_mark_each_step(tmp_path, data, monkeypatch):
    """compile_mode goes to torch.compile (auto on the CPU: torch's default, no mode); with CUDA graphs
    (reduce-overhead) every optimizer step marks its start once, not every micro-batch: the gradients of a
    step's earlier micro-batches must stay alive."""
    seen, marks = [], []

    def fake_compile(module, **kw):
        seen.append(kw)
        return module  # "compiled" = the module itself: the step runs as eager

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    train(_cfg(data, tmp_path / "default", compile=True, max_steps=2))
    assert seen[-1]["mode"] is None and seen[-1]["backend"] == "inductor" and marks == []
    summary = train(_cfg(data, tmp_path / "graphs", compile=True, compile_mode="reduce-overhead", max_steps=3,
                         **{"optim.batch_size": 8, "optim.micro_batch": 4}))
    assert seen[-1]["mode"] == "reduce-overhead" and summary["steps"] == 3 and len(marks) == 3
    with pytest.raises(Exception, match="compile_mode"):
        _cfg(data, tmp_path / "bad", compile_mode="fast")


def test_compile_mode_auto_is_cuda_graphs_for_one_gpu_process_only():
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert compile_mode("auto", cuda, 1) == "reduce-overhead"
    assert compile_mode("auto", cuda, 2) == "default" and compile_mode("auto", cpu, 1) == "default"
    assert compile_mode("max-autotune-no-cudagraphs", cuda, 1) == "max-autotune-no-cudagraphs"
