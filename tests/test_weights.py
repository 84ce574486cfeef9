"""armvision.weights: every source read into one Weights; the mappings onto a classifier; one CheckpointError."""

import shutil

import pytest
import torch
from official_reference import make_official_finetune_state_dict, official_pickle

import armvision
from armvision.errors import CheckpointError
from armvision.weights import CLASSIFIER, PRETRAINING, classifier_for, init_classifier, read_weights

TINY = dict(embed_dim=32, depth=6, d_state=4)
PRE = dict(TINY, img_size=16, patch_size=4, cluster_size=2, decoder_dim=32)


def test_every_source_reads_into_one_weights(tmp_path):
    pre = armvision.create_model("arm_tiny_pz16", pretraining=True, **PRE)
    armvision.save_model(pre, tmp_path / "m")
    step = tmp_path / "run" / "checkpoints" / "step_00000007"
    shutil.copytree(tmp_path / "m", step)
    (tmp_path / "bare").mkdir()
    shutil.copy(tmp_path / "m" / "model.safetensors", tmp_path / "bare" / "w.safetensors")
    own = pre.state_dict()
    for source in (tmp_path / "m", tmp_path / "m" / "model.safetensors", tmp_path / "run", step):
        w = read_weights(source)
        assert w.kind == PRETRAINING and w.config["architecture"] == "ARMPretrain" and w.grid == (4, 4), source
        assert w.official is None and set(w.state_dict) == set(own)
        assert all(torch.equal(w.state_dict[k], v) for k, v in own.items())
    assert read_weights(tmp_path / "run").source == str(step)
    bare = read_weights(tmp_path / "bare" / "w.safetensors")
    assert bare.kind == PRETRAINING and bare.config is None and bare.grid is None
    with pytest.raises(CheckpointError, match="bare weights without a config.json"):
        bare.build()
    memory = read_weights({"model": {f"module.{k}": v for k, v in own.items()}, "epoch": 3})
    assert memory.kind == PRETRAINING and set(memory.state_dict) == set(own) and memory.source == "state dict"

    sd = make_official_finetune_state_dict(embed_dim=32, depth=2, d_state=8, patch=4, grid=8, num_classes=10, seed=1)
    torch.save(official_pickle(sd, "finetuning"), tmp_path / "ft.pth")
    off = read_weights(tmp_path / "ft.pth")
    assert off.kind == CLASSIFIER and off.official.kind == CLASSIFIER and off.config["architecture"] == "ARMClassifier"
    assert off.args["num_classes"] == 10 and off.grid == (8, 8)
    assert torch.equal(off.build().head.weight, sd["head.weight"])


def test_init_classifier_is_the_pretraining_mapping_and_checks_the_encoder(tmp_path):
    pre = armvision.create_model("arm_tiny_pz16", pretraining=True, **PRE)
    armvision.save_model(pre, tmp_path / "m")
    torch.manual_seed(0)
    a = classifier_for(read_weights(tmp_path / "m"), num_classes=5)
    torch.manual_seed(0)
    b = armvision.create_model("arm_tiny_pz16", num_classes=5, img_size=16, patch_size=4, **TINY)
    info = init_classifier(a, tmp_path / "m")
    armvision.init_classifier_from_pretraining(b, pre)
    assert info == {"source": str(tmp_path / "m"), "architecture": "ARMPretrain", "step": None, "not_loaded": []}
    assert a.config["img_size"] == (16, 16) and a.num_classes == 5
    for (k, v), (k2, v2) in zip(a.state_dict().items(), b.state_dict().items()):
        assert k == k2 and (k.startswith("head.") or torch.equal(v, v2)), k  # the head is re-drawn
    assert a.head.weight.shape == (5, 32) and a.head.weight.abs().max() < 1e-3 and torch.all(a.head.bias == 0)
    wide = armvision.create_model("arm_tiny_pz16", num_classes=5, img_size=16, patch_size=4, **{**TINY, "depth": 7})
    with pytest.raises(CheckpointError, match=r"the pretraining model does not fit this classifier: depth: "
                                              r"checkpoint 6, classifier 7") as info:
        init_classifier(wide, tmp_path / "m")
    assert info.value.missing == []


def test_one_checkpoint_error_class():
    from armvision.interop import official

    assert official.CheckpointError is CheckpointError is armvision.CheckpointError
    assert issubclass(CheckpointError, ValueError) and issubclass(CheckpointError, armvision.errors.UserError)
    e = CheckpointError("m", missing=["a"], unexpected=("b",), mismatched=[("c", (1,), (2,))])
    assert (e.missing, e.unexpected, e.mismatched) == (["a"], ["b"], [("c", (1,), (2,))])


def test_weights_package_never_imports_interop():
    import ast
    from pathlib import Path

    import armvision.weights

    for path in Path(armvision.weights.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                assert not any("interop" in n for n in names), f"{path.name} imports {names}"


def test_build_raises_checkpoint_error_when_weights_do_not_fit(tmp_path):
    pre = armvision.create_model("arm_tiny_pz16", pretraining=True, **PRE)
    armvision.save_model(pre, tmp_path / "m")
    w = read_weights(tmp_path / "m")
    del w.state_dict["ar_token"]
    with pytest.raises(CheckpointError, match=r"does not fit ARMPretrain: 1 missing key\(s\): ar_token$") as info:
        w.build()
    assert info.value.missing == ["ar_token"]
    assert w.build(strict=False).ar_token.shape == pre.ar_token.shape  # not strict: the missing key keeps its init
    w.state_dict["pos_embed"] = w.state_dict["pos_embed"][:, :3]
    with pytest.raises(CheckpointError, match="1 shape mismatch"):
        w.build(strict=False)
    w.config["args"]["depth"] = 0
    with pytest.raises(CheckpointError, match="cannot build the model its config describes"):
        w.build()


def _touch(folder, *names):
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"")
    return folder


def test_find_checkpoint_resolves_a_run_for_each_need(tmp_path):
    from armvision.weights import find_checkpoint

    ckpts = tmp_path / "run" / "checkpoints"
    s1 = _touch(ckpts / "step_00000001", "config.json", "model.safetensors", "training_state.pt")
    s2 = _touch(ckpts / "step_00000002", "config.json", "model.safetensors", "training_state.pt")
    s3 = _touch(ckpts / "step_00000003", "config.json", "sharded.json", "sharded/.metadata", "training_state.pt")
    _touch(ckpts / "step_00000004", "config.json", "model.safetensors")  # weights only: no resuming from it
    (ckpts / "best").symlink_to("step_00000001")
    run = tmp_path / "run"
    assert find_checkpoint(run, need="model") == s1.resolve()  # the best
    assert find_checkpoint(run, need="model", prefer="latest").name == "step_00000001"  # no latest link: best
    assert find_checkpoint(run, need="resume") == s3  # the newest one with a training state
    assert find_checkpoint(run, need="any") == s1.resolve()
    (ckpts / "latest").symlink_to("step_00000002")
    assert find_checkpoint(run, need="model", prefer="latest") == s2.resolve()
    assert find_checkpoint(ckpts, need="resume") == s2.resolve()  # the checkpoints folder works as well
    assert find_checkpoint(s3, need="any") == s3 and find_checkpoint(s3, need="resume") == s3
    with pytest.raises(CheckpointError, match="holds sharded checkpoints"):
        find_checkpoint(s3, need="model")
    assert find_checkpoint(tmp_path / "nowhere", need="resume", required=False) is None
    with pytest.raises(CheckpointError, match="cannot resume from .*: it does not exist"):
        find_checkpoint(tmp_path / "nowhere", need="resume")
    with pytest.raises(CheckpointError, match="no checkpoint with a training_state.pt in it"):
        find_checkpoint(_touch(tmp_path / "empty", "x"), need="resume")
    with pytest.raises(ValueError, match="need must be one of"):
        find_checkpoint(run, need="weights")
