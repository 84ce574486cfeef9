"""Optimizer groups, the lr schedule, checkpoints (atomic, pruned, resolvable) and RNG states."""

import math
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import armvision
from armvision.errors import CheckpointError
from armvision.train.checkpoint import (
    STATE_NAME,
    CheckpointManager,
    load_init_weights,
    resolve_model_dir,
    resolve_resume_dir,
    rng_state,
    set_rng_state,
)
from armvision.train.config import OptimConfig
from armvision.train.optim import WarmupCosine, build_optimizer, build_param_groups, build_scheduler, peak_lr

TINY = dict(img_size=16, patch_size=4, in_chans=3, embed_dim=32, depth=6, d_state=4)


def _names(model, group):
    ids = {id(p) for p in group["params"]}
    return {n for n, p in model.named_parameters() if id(p) in ids}


@pytest.mark.parametrize("rule", ["reference", "mamba"])
def test_no_weight_decay_on_biases_norms_1d_and_with_the_mamba_rule_A_log_and_tokens(rule):
    pre = armvision.create_model("arm_tiny_pz16", pretraining=True, cluster_size=2, decoder_dim=32, **TINY)
    groups = build_param_groups(pre, 0.05, no_decay=rule)
    decay = set().union(*(_names(pre, g) for g in groups if g["weight_decay"] > 0))
    no_decay = set().union(*(_names(pre, g) for g in groups if g["weight_decay"] == 0))
    assert "layers.0.mixer.D" in no_decay
    assert ({"layers.0.mixer.A_log", "ar_token"} <= (no_decay if rule == "mamba" else decay))
    assert "layers.0.norm1.weight" in no_decay and "layers.0.mixer.conv1d.bias" in no_decay
    assert "layers.0.mixer.in_proj.weight" in decay and "dec_block.0.attn2.q.weight" in decay
    assert "pos_embed" not in decay | no_decay and "dec_pos_embed" not in decay | no_decay  # fixed: not trained
    trainable = {n for n, p in pre.named_parameters() if p.requires_grad}
    assert decay | no_decay == trainable and not decay & no_decay
    assert all(p.ndim > 1 for n, p in pre.named_parameters() if n in decay)
    with pytest.raises(ValueError, match="weight decay rule 'timm': expected one of reference, mamba"):
        build_param_groups(pre, 0.05, no_decay="timm")


def test_layer_decay_scales_follow_the_block_index():
    clf = armvision.create_model("arm_tiny_pz16", num_classes=5, **TINY)
    groups = build_param_groups(clf, 0.05, layer_decay=0.5)
    scale = {n: g["lr_scale"] for g in groups for n in _names(clf, g)}
    # as the reference: stem, 6 blocks, then norm_f with the head: 8 levels; the head gets 1, the stem 0.5 ** 7
    assert scale["head.weight"] == 1.0 and scale["norm_f.weight"] == 1.0
    assert scale["layers.5.mixer.in_proj.weight"] == 0.5
    assert scale["layers.0.mixer.A_b_log"] == 0.5**6
    assert scale["pos_embed"] == scale["cls_token"] == scale["patch_embed.proj.weight"] == 0.5**7
    no_decay = set().union(*(_names(clf, g) for g in groups if g["weight_decay"] == 0))
    assert {"pos_embed", "cls_token", "layers.3.mixer.D_c_b", "head.bias"} <= no_decay
    opt = build_optimizer(clf, OptimConfig(blr=1e-3, batch_size=512, layer_decay=0.5, betas=(0.9, 0.95)))
    assert peak_lr(OptimConfig(blr=1e-3, batch_size=512)) == 2e-3  # blr * batch / 256
    assert sorted({g["lr"] for g in opt.param_groups}) == pytest.approx(sorted({2e-3 * 0.5**k for k in range(8)}))
    assert opt.defaults["betas"] == (0.9, 0.95)


def test_warmup_then_half_cosine_per_step():
    f = WarmupCosine(total_steps=110, warmup_steps=10, peak_lr=1e-3, min_lr=1e-5)
    assert [f(s) for s in range(3)] == [0.1, 0.2, pytest.approx(0.3)]
    assert f(9) == 1.0 and f(10) == 1.0
    assert f(60) == pytest.approx(0.01 + 0.99 * 0.5)  # half way down the cosine
    assert f(110) == pytest.approx(0.01) and f(500) == pytest.approx(0.01)
    lin = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(lin.parameters(), lr=1e-3)
    sched = build_scheduler(opt, 110, 10, OptimConfig(lr=1e-3, min_lr=1e-5))
    lrs = []
    for _ in range(110):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert lrs[35] == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * 25 / 100)))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_rng_states_round_trip_through_weights_only_load(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = rng_state()
    torch.save(state, tmp_path / "s.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(torch.load(tmp_path / "s.pt", weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def _save(mgr, step, model, is_best=False):
    return mgr.save(step, model, {"step": step}, {"training": {}}, metrics={"top1": step}, is_best=is_best)


def test_checkpoints_are_atomic_pruned_and_keep_the_best(tmp_path, monkeypatch):
    model = torch.nn.Linear(2, 2)
    model.config = {}
    clf = armvision.create_model("arm_tiny_pz16", num_classes=3, **TINY)
    mgr = CheckpointManager(tmp_path / "run", keep_last=2)
    _save(mgr, 1, clf, is_best=True)
    _save(mgr, 2, clf)
    _save(mgr, 3, clf)
    names = sorted(p.name for p in mgr.dir.iterdir())
    assert names == ["best", "latest", "step_00000001", "step_00000002", "step_00000003"]  # best survives pruning
    assert mgr.latest().name == "step_00000003" and mgr.best().name == "step_00000001"
    _save(mgr, 4, clf, is_best=True)
    assert sorted(p.name for p in mgr.dir.iterdir()) == ["best", "latest", "step_00000003", "step_00000004"]
    before = (mgr.dir / "step_00000004" / "model.safetensors").read_bytes()

    # a save that dies half-way leaves the previous checkpoints and links exactly as they were
    def broken_save(obj, f, *a, **k):
        Path(f).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        _save(mgr, 5, clf, is_best=True)
    monkeypatch.undo()
    assert sorted(p.name for p in mgr.dir.iterdir()) == ["best", "latest", "step_00000003", "step_00000004"]
    assert mgr.latest().name == mgr.best().name == "step_00000004"
    assert (mgr.dir / "step_00000004" / "model.safetensors").read_bytes() == before
    assert resolve_resume_dir(tmp_path / "run").name == "step_00000004"
    assert resolve_model_dir(tmp_path / "run").name == "step_00000004"
    loaded = armvision.load_model(resolve_model_dir(tmp_path / "run"))
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), clf.state_dict().values()))
    # a stale temporary folder of a crashed process is removed at the next start
    (mgr.dir / ".tmp-step_00000009-dead").mkdir()
    assert [p.name for p in mgr.remove_partial()] == [".tmp-step_00000009-dead"]
    # a step folder moved aside by a re-save that crashed before the new copy landed goes back in place
    os.replace(mgr.dir / "step_00000004", mgr.dir / ".tmp-old-step_00000004-dead")
    assert mgr.remove_partial() == []
    assert (mgr.dir / "step_00000004" / "model.safetensors").read_bytes() == before


def test_pruning_keeps_the_best_with_a_relative_run_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    clf = armvision.create_model("arm_tiny_pz16", num_classes=3, **TINY)
    mgr = CheckpointManager("relrun", keep_last=1)
    _save(mgr, 1, clf, is_best=True)
    _save(mgr, 2, clf)
    _save(mgr, 3, clf)
    assert sorted(p.name for p in mgr.dir.iterdir()) == ["best", "latest", "step_00000001", "step_00000003"]
    assert mgr.best().name == "step_00000001"


def test_resolving_checkpoints_gives_clear_errors(tmp_path):
    pth = tmp_path / "arm_base.pth"
    pth.write_bytes(b"pickle")
    with pytest.raises(CheckpointError, match=r"arm_base.pth is a PyTorch pickle .*Convert it first with "
                                              r"`armvision convert .*arm_base.pth OUT_DIR` and pass OUT_DIR \(`--init` takes the .pth directly\)"):
        resolve_model_dir(pth)
    with pytest.raises(CheckpointError, match=r"nowhere does not exist; expected an armvision model directory"):
        resolve_model_dir(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"no model found in .*empty"):
        resolve_model_dir(tmp_path / "empty")
    with pytest.raises(CheckpointError, match=rf"no checkpoint with a {STATE_NAME} in it"):
        resolve_resume_dir(tmp_path / "empty")


def test_init_from_pretraining_checks_the_encoder(tmp_path):
    pre = armvision.create_model("arm_tiny_pz16", pretraining=True, cluster_size=2, decoder_dim=32, **TINY)
    armvision.save_model(pre, tmp_path / "pre")
    clf = armvision.create_model("arm_tiny_pz16", num_classes=3, **{**TINY, "img_size": 32})
    info = load_init_weights(clf, tmp_path / "pre")
    assert info["architecture"] == "ARMPretrain"
    assert torch.equal(clf.layers[2].mixer.x_proj_c_b.weight, pre.layers[2].mixer.x_proj.weight)
    assert clf.pos_embed.shape == (1, 65, 32)  # 4x4 pretraining grid resized to 8x8, class slot inserted
    wide = armvision.create_model("arm_tiny_pz16", num_classes=3, **{**TINY, "embed_dim": 64})
    with pytest.raises(CheckpointError, match=r"does not fit the fine-tuning model: embed_dim: 32 \(init\) vs 64"):
        load_init_weights(wide, tmp_path / "pre")
    # a classifier continues from a classifier; a new head size keeps its fresh head
    armvision.save_model(clf, tmp_path / "clf")
    other = armvision.create_model("arm_tiny_pz16", num_classes=7, **{**TINY, "img_size": 32})
    info = load_init_weights(other, tmp_path / "clf")
    assert sorted(info["not_loaded"]) == ["head.bias", "head.weight"]
    assert torch.equal(other.layers[0].mixer.in_proj.weight, clf.layers[0].mixer.in_proj.weight)


def test_an_explicit_gpu_index_under_torchrun_is_refused(monkeypatch):
    from armvision.errors import ConfigError
    from armvision.train import distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(ConfigError, match=r"device 'cuda:0' under torchrun \(2 processes\) would put every process"):
        distributed.setup("cuda:0")


def test_schedule_restores_through_its_step_count():
    """The schedule's state is its step count; restored into a schedule built from the current config
    (here: twice as long), it continues there. Checkpoints of torch's LambdaLR still load."""
    from armvision.train.optim import WarmupCosineSchedule

    lin = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW([{"params": lin.weight, "lr_scale": 1.0}, {"params": lin.bias, "lr_scale": 0.5}])
    sched = WarmupCosineSchedule(opt, 110, 10, 1e-3, 1e-5)
    for _ in range(7):
        sched.step()
    assert sched.state_dict() == {"step": 7}
    assert [g["lr"] for g in opt.param_groups] == sched.lr_at(7) == [pytest.approx(8e-4), pytest.approx(4e-4)]
    longer = WarmupCosineSchedule(opt, 220, 10, 1e-3, 1e-5)
    longer.load_state_dict(sched.state_dict())
    f = WarmupCosine(220, 10, 1e-3, 1e-5)
    longer.step()
    assert longer.last_step == 8 and [g["lr"] for g in opt.param_groups] == [1e-3 * f(8), 0.5e-3 * f(8)]
    old = torch.optim.lr_scheduler.LambdaLR(torch.optim.AdamW(lin.parameters(), lr=1e-3), lambda s: 1.0)
    for _ in range(5):
        old.optimizer.step()
        old.step()
    longer.load_state_dict({k: v for k, v in old.state_dict().items() if k != "lr_lambdas"})
    assert longer.last_step == 5 and opt.param_groups[0]["lr"] == 1e-3 * f(5)
    with pytest.raises(ValueError, match="not a learning-rate schedule state"):
        longer.load_state_dict({"epoch": 3})


def test_health_judges_checkpoints_against_the_best_smoothed_loss(tmp_path):
    import json
    import math

    from armvision.train.health import Health, baseline_loss

    rising = [(i, v) for i, v in enumerate([2.0, 1.5, 1.2, 1.0, 1.0, 1.0, 352.0, 4040.0, 13948.0])]
    assert baseline_loss(rising) == pytest.approx(1.14)  # the best mean of five, not the blown-up tail
    assert baseline_loss([(0, math.nan)]) is None
    mgr = CheckpointManager(tmp_path / "run")
    health = Health(mgr, torch.device("cpu"), skip_nonfinite=1, loss_rise_factor=3.0)
    for step, loss, good in ((1, 3.4, True), (2, 3.5, False)):  # 3 x 1.14 = 3.42
        ckpt = tmp_path / "run" / "checkpoints" / f"step_{step:08d}"
        ckpt.mkdir(parents=True)
        health.expect(ckpt, rising)
        health.judge(torch.tensor(loss))
        assert json.loads((ckpt / "health.json").read_text())["good"] is good and health.pending is None
    one = torch.ones((), dtype=torch.float64)
    health.record_step(torch.tensor(True), one, torch.tensor(math.nan, dtype=torch.float64), torch.tensor(2.0))
    assert health.check_nonfinite() is None  # one skipped step is allowed
    health.record_step(torch.tensor(True), 2 * one, torch.tensor(5.0, dtype=torch.float64), torch.tensor(math.inf))
    assert health.check_nonfinite() == ("training loss", pytest.approx(math.nan, nan_ok=True), 0)
