"""Official ARM checkpoints: exact conversion (against an independent re-implementation of the reference
code), the inverse bit for bit, the pretraining -> fine-tuning initialisation, and every error path."""

import argparse
import datetime
import math

import pytest
import torch
from conftest import rel_err
from official_reference import (
    make_official_finetune_state_dict,
    make_official_pretrain_state_dict,
    official_pickle,
    reference_finetune_init,
    reference_finetune_logits,
    reference_pretrain,
)

import armvision
from armvision import ARMClassifier, ARMPretrain
from armvision.interop.official import (
    CheckpointError,
    is_official_checkpoint,
    load_official,
    read_official_checkpoint,
    safe_torch_load,
    save_official,
    to_official,
)
from armvision.layers import DIRECTIONS
from armvision.weights import init_classifier_from_official
from armvision.models import default_memory_layers

# small versions of the reference geometry: pretraining 12x12 patches (9 clusters of 4x4), patch 2;
# fine-tuning 8x8 patches, patch 4 (an even patch count: class token at 32 of 65)
PRE = dict(embed_dim=32, depth=12, d_state=8, dec_dim=128, patch=2, grid=12)
FT = dict(embed_dim=32, depth=2, d_state=8, patch=4, grid=8, num_classes=10)


@pytest.fixture(scope="module")
def pre_sd():
    return make_official_pretrain_state_dict(**PRE, seed=1)


@pytest.fixture(scope="module")
def ft_sd():
    return make_official_finetune_state_dict(**FT, seed=2)


def _save(tmp_path, obj, name="ckpt.pth"):
    path = tmp_path / name
    torch.save(obj, path)
    return path


def _f64(sd):
    return {k: v.double() for k, v in sd.items()}


# ---------------------------------------------------------------------------------------------
# the converted model computes what the reference computes
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("global_pool", [True, None])
def test_finetune_checkpoint_computes_reference_logits(tmp_path, ft_sd, global_pool, seed):
    ckpt = official_pickle(ft_sd, "finetuning")
    ckpt["args"].global_pool = global_pool  # None: flag not given -> the reference pools the class token
    model = load_official(_save(tmp_path, ckpt))
    assert isinstance(model, ARMClassifier)
    assert model.global_pool == ("avg" if global_pool else "token")
    assert model.config["img_size"] == (32, 32) and model.num_classes == 10 and model.depth == 2
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    ref = reference_finetune_logits(_f64(ft_sd), x, bool(global_pool))
    assert rel_err(model.double().eval()(x), ref) < 1e-12
    # and in float32, as one would run it
    ref32 = reference_finetune_logits(ft_sd, x.float(), bool(global_pool))
    assert rel_err(model.float()(x.float()), ref32) < 1e-5


@torch.no_grad()
def test_pretraining_checkpoint_computes_reference_prediction_and_loss(tmp_path, pre_sd, seed):
    model = load_official(_save(tmp_path, official_pickle(pre_sd, "pretraining")))
    assert isinstance(model, ARMPretrain)
    assert model.memory_layers == (6, 8, 10, 12) and model.geometry.cluster_size == 4
    x = torch.randn(2, 3, 24, 24, dtype=torch.float64)
    ref = reference_pretrain(_f64(pre_sd), x)
    model = model.double()
    memory = model.forward_encoder(x)
    assert rel_err(memory, ref["memory"]) < 1e-12
    assert rel_err(model.forward_decoder(memory), ref["pred"]) < 1e-12
    # armvision computes the target (and so the loss) in float32 whatever the input dtype
    assert (model.targets(x).double() - ref["target"]).abs().max() < 1e-5
    # the loss, in float32 as one would run it: the mean of the reference's per-token losses
    x32 = x[:1].float()
    ref32 = reference_pretrain(pre_sd, x32)
    assert rel_err(model.float()(x32), ref32["loss"]) < 1e-5


# ---------------------------------------------------------------------------------------------
# where every tensor lands
# ---------------------------------------------------------------------------------------------
def test_every_official_tensor_lands_under_its_own_name(pre_sd, ft_sd):
    for sd, kind in ((pre_sd, "pretraining"), (ft_sd, "finetuning")):
        model = load_official(official_pickle(sd, kind))
        ours = model.state_dict()
        assert set(ours) == set(sd) - {"mask"}
        for k, v in sd.items():
            if k != "mask":
                assert torch.equal(ours[k], v), k


def test_direction_names_are_the_references(ft_sd):
    model = load_official(official_pickle(ft_sd, "finetuning"))
    assert [s for _, s in DIRECTIONS] == ["", "_b", "_c", "_c_b"]
    assert [n for n, _ in DIRECTIONS] == ["forward", "backward", "column", "column_backward"]
    mixer = model.layers[1].mixer
    for i, (_, s) in enumerate(DIRECTIONS):
        conv, x_proj, dt_proj, A_log, D = mixer.direction_params(i)
        p = "layers.1.mixer."
        assert torch.equal(conv.weight, ft_sd[f"{p}conv1d{s}.weight"])
        assert torch.equal(x_proj.weight, ft_sd[f"{p}x_proj{s}.weight"])
        assert torch.equal(dt_proj.bias, ft_sd[f"{p}dt_proj{s}.bias"])
        assert torch.equal(A_log, ft_sd[f"{p}A{s}_log"])
        assert torch.equal(D, ft_sd[f"{p}D{s}"])


def test_decoder_memory_takes_interleaved_channels(pre_sd, seed):
    model = load_official(official_pickle(pre_sd, "pretraining"))
    captured = {}
    model.enc2dec.register_forward_hook(lambda m, i, o: captured.setdefault("out", o))
    memory = model.forward_encoder(torch.randn(1, 3, 24, 24))
    out = captured["out"]  # (1, 128, 4 * 128)
    assert memory.shape == (1, 128, 128, 4)
    for k in range(4):  # level k = channels k, k + 4, k + 8, ...
        assert torch.equal(memory[..., k], out[..., k::4])


def test_memory_layers_are_the_reference_skip_lists():
    assert default_memory_layers(12) == (6, 8, 10, 12)
    assert default_memory_layers(24) == (12, 16, 20, 24)


# ---------------------------------------------------------------------------------------------
# the inverse, bit for bit
# ---------------------------------------------------------------------------------------------
def test_official_to_armvision_to_official_is_bit_exact(tmp_path, pre_sd, ft_sd):
    for sd, kind, strict in ((pre_sd, "pretraining", False), (ft_sd, "finetuning", True)):
        model = load_official(_save(tmp_path, official_pickle(sd, kind)))
        path = save_official(model, tmp_path / f"back-{kind}.pth", strict=strict)
        back = safe_torch_load(path)
        assert isinstance(back["args"], argparse.Namespace)
        assert set(back["model"]) == set(sd)
        for k, v in sd.items():
            assert back["model"][k].dtype == v.dtype and torch.equal(back["model"][k], v), k


def test_armvision_to_official_to_armvision_is_bit_exact(tmp_path):
    for model in (armvision.create_model("arm_tiny_pz16", pretraining=True, img_size=24, patch_size=2,
                                         embed_dim=32, depth=12, decoder_dim=64),
                  armvision.create_model("arm_tiny_pz16", img_size=32, patch_size=4, embed_dim=32, depth=2,
                                         num_classes=7, global_pool="token")):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        path = save_official(model, tmp_path / "m.pth", strict=False)
        loaded = load_official(path)
        assert type(loaded) is type(model) and loaded.config == model.config
        for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
            assert k == k2 and torch.equal(v, v2), k


def test_official_mask_written_back(pre_sd):
    model = load_official(official_pickle(pre_sd, "pretraining"))
    mask = to_official(model, strict=False)["model"]["mask"]
    assert mask.dtype == torch.float32 and torch.equal(mask, pre_sd["mask"])


@pytest.mark.parametrize("name, width, depth, pre_params, ft_params", [
    ("arm_base_pz16", 768, 12, 99.4, 85.0), ("arm_large_pz16", 1024, 24, 303.9, 297.0),
    ("arm_huge_pz16", 1536, 24, 659.4, 662.7)])
def test_full_size_official_layouts_are_understood(name, width, depth, pre_params, ft_params):
    """The B/L/H layouts (shapes only): the inferred models are the paper's."""
    from armvision.interop.official import check_official_state_dict, infer_model_args

    pre = make_official_pretrain_state_dict(embed_dim=width, depth=depth, d_state=16, dec_dim=512, patch=16, grid=12,
                                            meta=True)
    args = infer_model_args(pre, "pretraining")
    check_official_state_dict(pre, "pretraining", args)
    skip = {12: (6, 8, 10, 12), 24: (12, 16, 20, 24)}[depth]  # the reference's self.skip
    assert args == dict(embed_dim=width, depth=depth, patch_size=16, in_chans=3, d_state=16, img_size=192,
                        cluster_size=4, decoder_dim=512, decoder_mlp_ratio=4.0, memory_layers=skip, norm_pix_loss=True)
    with torch.device("meta"):
        assert round(sum(p.numel() for p in ARMPretrain(**args).parameters()) / 1e6, 1) == pre_params
    for grid in (14, 24):
        ft = make_official_finetune_state_dict(embed_dim=width, depth=depth, d_state=16, patch=16, grid=grid,
                                               num_classes=1000, meta=True)
        args = infer_model_args(ft, "finetuning", {"global_pool": True})
        check_official_state_dict(ft, "finetuning", args)
        assert args == dict(embed_dim=width, depth=depth, patch_size=16, in_chans=3, d_state=16, img_size=grid * 16,
                            num_classes=1000, directions=4, global_pool="avg")
        if grid == 14:
            with torch.device("meta"):
                assert round(sum(p.numel() for p in ARMClassifier(**args).parameters()) / 1e6, 1) == ft_params


def test_the_papers_models_have_an_official_layout():
    from armvision.interop.official import _representation_problems

    for name in ("arm_base_pz16", "arm_large_pz16", "arm_huge_pz16"):
        with torch.device("meta"):
            pre = armvision.create_model(name, pretraining=True)
            clf = armvision.create_model(name)
            clf384 = armvision.create_model(name, img_size=384)
        for m in (pre, clf, clf384):
            assert _representation_problems(m) == ([], []), name


# ---------------------------------------------------------------------------------------------
# pretraining checkpoint -> fine-tuning start (finetune --init official.pth)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("img", [24, 32])  # the pretraining grid (12x12) and a larger one (16x16)
def test_classifier_init_from_official_pretraining_is_the_references(tmp_path, pre_sd, img):
    path = _save(tmp_path, official_pickle(pre_sd, "pretraining"))
    clf = ARMClassifier(img_size=img, patch_size=2, embed_dim=32, depth=12, d_state=8, num_classes=5)
    init_classifier_from_official(clf, path)
    expected = reference_finetune_init({k: v for k, v in pre_sd.items()}, (img // 2) ** 2)
    ours = clf.state_dict()
    loaded = [k for k in ours if k in expected]
    assert set(ours) - set(loaded) == {"cls_token", "norm_f.weight", "norm_f.bias", "head.weight", "head.bias"}
    for k in loaded:
        if k == "pos_embed" and img != 24:
            assert torch.allclose(ours[k], expected[k], atol=1e-6), k
        else:
            assert torch.equal(ours[k], expected[k]), k
    assert clf.head.weight.std() < 1e-4 and torch.equal(clf.norm_f.weight, torch.ones(32))


def test_classifier_init_from_official_finetuning_adapts_head_and_grid(tmp_path, ft_sd, seed):
    path = _save(tmp_path, official_pickle(ft_sd, "finetuning"))
    same = init_classifier_from_official(ARMClassifier(img_size=32, patch_size=4, embed_dim=32, depth=2, d_state=8,
                                                       num_classes=10), path)
    assert all(torch.equal(v, ft_sd[k]) for k, v in same.state_dict().items())
    other = ARMClassifier(img_size=48, patch_size=4, embed_dim=32, depth=2, d_state=8, num_classes=3)
    head = other.head.weight.clone()
    init_classifier_from_official(other, path)
    assert torch.equal(other.head.weight, head)  # other class count: the classifier keeps its own head
    assert other.pos_embed.shape == (1, 145, 32)
    assert torch.equal(other.pos_embed[0, 72], ft_sd["pos_embed"][0, 32])  # class-token slot carried over
    assert torch.equal(other.layers[1].mixer.A_c_b_log, ft_sd["layers.1.mixer.A_c_b_log"])
    other(torch.randn(1, 3, 48, 48))


def test_classifier_init_from_official_rejects_other_widths(tmp_path, pre_sd):
    path = _save(tmp_path, official_pickle(pre_sd, "pretraining"))
    with pytest.raises(CheckpointError, match=r"does not fit this classifier: embed_dim: checkpoint 32, classifier 48"):
        init_classifier_from_official(ARMClassifier(img_size=24, patch_size=2, embed_dim=48, depth=12, d_state=8), path)


# ---------------------------------------------------------------------------------------------
# reading checkpoints
# ---------------------------------------------------------------------------------------------
def test_ema_weights_preferred_as_the_reference_evaluates(tmp_path, ft_sd):
    ema = {k: v + 1 for k, v in ft_sd.items()}
    path = _save(tmp_path, official_pickle(ft_sd, "finetuning", model_ema=ema))
    ckpt = read_official_checkpoint(path)
    assert ckpt.state_dict_key == "model_ema" and torch.equal(ckpt.state_dict["head.bias"], ema["head.bias"])
    assert ckpt.epoch == 99 and ckpt.extra == {"max_accuracy": 83.2, "ema_max_accuracy": 83.3}
    assert ckpt.args["nb_classes"] == 1000
    plain = read_official_checkpoint(path, ema=False)
    assert plain.state_dict_key == "model" and torch.equal(plain.state_dict["head.bias"], ft_sd["head.bias"])


def test_wrapper_prefixes_and_bare_state_dicts(tmp_path, ft_sd):
    wrapped = {f"module._orig_mod.{k}": v for k, v in ft_sd.items()}
    model = load_official(_save(tmp_path, {"model": wrapped}))
    assert torch.equal(model.state_dict()["head.weight"], ft_sd["head.weight"])
    bare = read_official_checkpoint(_save(tmp_path, ft_sd, "bare.pth"))
    assert bare.state_dict_key is None and bare.kind == "classifier" and bare.model_args["global_pool"] == "avg"


def test_is_official_checkpoint(tmp_path, pre_sd, ft_sd):
    assert is_official_checkpoint(_save(tmp_path, official_pickle(pre_sd, "pretraining"), "p.pth"))
    assert is_official_checkpoint(_save(tmp_path, official_pickle(ft_sd, "finetuning"), "f.pth"))
    assert not is_official_checkpoint(_save(tmp_path, {"model": {"fc.weight": torch.zeros(2, 2)}}, "x.pth"))
    (tmp_path / "t.txt").write_text("hello")
    assert not is_official_checkpoint(tmp_path / "t.txt")
    assert not is_official_checkpoint(tmp_path / "missing.pth")
    assert not is_official_checkpoint(tmp_path)


# ---------------------------------------------------------------------------------------------
# error paths
# ---------------------------------------------------------------------------------------------
def test_missing_unexpected_and_misshapen_keys_are_listed(tmp_path, ft_sd):
    sd = dict(ft_sd)
    del sd["layers.1.mixer.D_c"]
    sd["layers.0.extra.weight"] = torch.zeros(3)
    sd["layers.0.mlp.w1.weight"] = torch.zeros(80, 32)
    with pytest.raises(CheckpointError) as info:
        load_official(_save(tmp_path, official_pickle(sd, "finetuning")))
    msg = str(info.value)
    assert "ckpt.pth: does not match the ARM finetuning model" in msg
    assert "1 missing key(s): layers.1.mixer.D_c" in msg
    assert "1 unexpected key(s): layers.0.extra.weight" in msg
    assert "layers.0.mlp.w1.weight is (80, 32) in the checkpoint, expected (85, 32)" in msg
    err = info.value
    assert err.missing == ["layers.1.mixer.D_c"] and err.unexpected == ["layers.0.extra.weight"]
    assert err.mismatched == [("layers.0.mlp.w1.weight", (80, 32), (85, 32))]


def test_missing_whole_layer_and_decoder_keys(pre_sd):
    sd = {k: v for k, v in pre_sd.items() if not k.startswith(("layers.3.", "dec_block.2.norm2."))}
    with pytest.raises(CheckpointError, match=r"21 missing key\(s\): layers\.3\.\* \(19 keys\), "
                                              r"dec_block\.2\.norm2\.weight, dec_block\.2\.norm2\.bias$"):
        load_official({"model": sd})


def test_truncated_and_corrupt_files(tmp_path, ft_sd):
    path = _save(tmp_path, official_pickle(ft_sd, "finetuning"))
    data = path.read_bytes()
    (tmp_path / "half.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"half\.pth: cannot read a PyTorch checkpoint from this file "
                                              r"\(truncated, corrupt"):
        load_official(tmp_path / "half.pth")
    (tmp_path / "notes.pth").write_text("not a checkpoint\n")
    with pytest.raises(CheckpointError, match=r"notes\.pth: cannot read a PyTorch checkpoint"):
        load_official(tmp_path / "notes.pth")
    with pytest.raises(FileNotFoundError, match="nothing.pth: no such checkpoint file"):
        load_official(tmp_path / "nothing.pth")


def test_objects_outside_the_allow_list_are_refused(tmp_path, ft_sd):
    ckpt = official_pickle(ft_sd, "finetuning", saved_at=datetime.date(2024, 6, 1))
    path = _save(tmp_path, ckpt)
    with pytest.raises(CheckpointError, match=r"outside armvision's allow-list: datetime\.date.*allow_globals"):
        load_official(path)
    model = load_official(path, allow_globals=[datetime.date])  # the caller's explicit trust
    assert model.num_classes == 10


def test_not_a_checkpoint_dict_or_not_arm(tmp_path):
    with pytest.raises(CheckpointError, match=r"expected a checkpoint dict .* found a list"):
        load_official(_save(tmp_path, [1, 2, 3]))
    with pytest.raises(CheckpointError, match=r"no state dict found: expected a 'model' .* top-level keys: epoch, "
                                              r"optimizer"):
        load_official(_save(tmp_path, {"epoch": 3, "optimizer": {}}))
    vit = {"patch_embed.proj.weight": torch.zeros(8, 3, 4, 4), "blocks.0.attn.qkv.weight": torch.zeros(24, 8)}
    with pytest.raises(CheckpointError, match=r"not an ARM checkpoint: none of the pretraining keys .*missing also "
                                              r"pos_embed, layers\.0\.mixer\.in_proj\.weight"):
        load_official({"model": vit})
    with pytest.raises(CheckpointError, match="EMA weights were asked for, but the checkpoint has no 'model_ema'"):
        load_official({"model": {"cls_token": torch.zeros(1, 1, 4)}}, ema=True)


def test_both_kinds_of_keys_is_an_error(pre_sd, ft_sd):
    with pytest.raises(CheckpointError, match="has keys of both the pretraining model"):
        load_official({"model": {**pre_sd, "cls_token": ft_sd["cls_token"]}})


def test_geometry_the_reference_cannot_have(pre_sd, ft_sd):
    odd = make_official_finetune_state_dict(embed_dim=16, depth=1, d_state=4, patch=4, grid=7, num_classes=0)
    with pytest.raises(CheckpointError, match="7x7 patch grid has an odd number of patches"):
        load_official({"model": odd})
    sd = dict(pre_sd, pos_embed=torch.zeros(1, 140, 32))
    with pytest.raises(CheckpointError, match="pos_embed has 140 patch positions, not a square grid"):
        load_official({"model": sd})
    bad_mask = pre_sd["mask"].clone()
    bad_mask[0, 20] = 0.0  # the first query may see into the second cluster
    with pytest.raises(CheckpointError, match="'mask' is not the block-causal mask of clusters of 16 tokens"):
        load_official({"model": dict(pre_sd, mask=bad_mask)})
    ten = dict(pre_sd, pos_embed=torch.zeros(1, 100, 32), dec_pos_embed=torch.zeros(1, 100, 128),
               mask=torch.zeros(91, 91))  # a 10x10 grid and clusters of 3x3 patches
    with pytest.raises(CheckpointError, match="describes an ARM model armvision cannot build: the 10x10 patch grid"):
        load_official({"model": ten})


def test_conversion_overrides_must_not_change_shapes(ft_sd):
    model = load_official({"model": ft_sd}, dynamic_img_size=True, drop_path_rate=0.1)
    assert model.forward_features(torch.randn(1, 3, 48, 48)).shape == (1, 145, 32)
    with pytest.raises(TypeError, match=r"cannot override \['img_size', 'num_classes'\] .*"
                                        r"init_classifier_from_official"):
        load_official({"model": ft_sd}, img_size=48, num_classes=3)


def test_models_without_an_official_layout(pre_sd):
    odd_layers = ARMPretrain(img_size=24, patch_size=2, embed_dim=32, depth=12, decoder_dim=64,
                             memory_layers=(3, 6, 9, 12))
    with pytest.raises(CheckpointError, match=r"no official ARM checkpoint: decoder memory layers \(3, 6, 9, 12\) "
                                              r"\(the layout implies \(6, 8, 10, 12\)\)"):
        to_official(odd_layers, strict=False)
    rect = ARMClassifier(img_size=(32, 48), patch_size=4, embed_dim=16, depth=1)
    with pytest.raises(CheckpointError, match=r"a non-square patch grid \(8, 12\)"):
        to_official(rect, strict=False)
    small = ARMPretrain(img_size=16, patch_size=2, cluster_size=2, embed_dim=32, depth=12, decoder_dim=64)
    with pytest.raises(CheckpointError, match=r"clusters of 2x2 patches, 16 of them .*"
                                              r"\(pass strict=False to write the layout anyway\)"):
        to_official(small)
    assert set(to_official(small, strict=False)["model"]) >= {"mask", "ar_pred.weight"}
    with pytest.raises(TypeError, match="not an armvision ARM model"):
        to_official(torch.nn.Linear(2, 2))


def test_pretrained_weights_stay_exact_through_a_saved_model_dir(tmp_path, pre_sd):
    model = load_official(official_pickle(pre_sd, "pretraining"))
    armvision.save_model(model, tmp_path / "m")
    again = armvision.load_model(tmp_path / "m")
    assert all(torch.equal(v, pre_sd[k]) for k, v in again.state_dict().items())
    assert math.isclose(again.config["decoder_mlp_ratio"], 4.0)
