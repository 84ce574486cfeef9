"""The Vim family: the two-direction mixer, the Vim block and classifier against an independent re-implementation
of the reference code (vim_reference.py) in float64, official Vim checkpoints both ways, the published sizes, ARM
pretraining of a Vim encoder, and the registry / timm names."""

import argparse
import math

import pytest
import timm
import torch
from conftest import rel_err
from vim_reference import (
    TINY,
    make_official_vim_state_dict,
    official_vim_pickle,
    reference_vim_features,
    reference_vim_logits,
    reference_vim_mixer,
)

import armvision
from armvision import ARMClassifier, ARMPretrain, ops
from armvision.errors import CheckpointError
from armvision.interop.official import load_official, read_official_checkpoint, safe_torch_load, save_official
from armvision.interop.official_vim import infer_vim_model_args
from armvision.layers import Mamba, TokenLayout, VimBlock
from armvision.models.vim import REFERENCE_NAMES
from armvision.weights import classifier_for, init_classifier, read_weights

# small Vims in the official layout: an 8x8 patch grid (class token at 32 of 65) and a 7x7 one (at 24 of 50)
EVEN = dict(embed_dim=32, depth=2, d_state=8, patch=4, grid=8, num_classes=10)
ODD = dict(embed_dim=24, depth=3, d_state=4, patch=4, grid=7, num_classes=5)


def _f64(sd):
    return {k: v.double() for k, v in sd.items()}


def _save(tmp_path, obj, name="vim.pth"):
    torch.save(obj, tmp_path / name)
    return tmp_path / name


# ---------------------------------------------------------------------------------------------
# the mixer: two directions, and ARM's one and four unchanged around it
# ---------------------------------------------------------------------------------------------
def _mixer_sd(m: Mamba, prefix: str = "") -> dict:
    return {prefix + k: v for k, v in m.state_dict().items()}


def test_two_direction_mixer_is_the_references_bimamba_v2(seed):
    m = Mamba(12, d_state=4, expand=2, directions=2, backend="torch").double()
    with torch.no_grad():  # directions with different parameters
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    x = torch.randn(2, 9, 12, dtype=torch.float64)
    assert m.d_inner == 24 and m.dt_rank == 1
    assert rel_err(m(x), reference_vim_mixer(x, _mixer_sd(m), "")) < 1e-13


def test_two_directions_are_the_first_two_of_four(seed):
    """The same forward and backward scans as the four-direction mixer's first two, with the same parameters."""
    m4 = Mamba(8, d_state=4, expand=2, directions=4, backend="torch").double()
    m2 = Mamba(8, d_state=4, expand=2, directions=2, backend="torch").double()
    m2.load_state_dict({k: v for k, v in m4.state_dict().items() if "_c" not in k})
    x = torch.randn(2, 7, 8, dtype=torch.float64)
    o4, o2 = m4.forward_directions(x, TokenLayout((2, 3), 3)), m2.forward_directions(x)
    assert len(o2) == 2 and torch.equal(o2[0], o4[0]) and torch.equal(o2[1], o4[1])
    with pytest.raises(ValueError, match="scans in 1, 2 or 4 directions, got directions=3"):
        Mamba(8, directions=3)


def test_backward_direction_reads_the_sequence_from_the_end(seed):
    """Backward: a token's output depends on itself and the tokens after it only."""
    m = Mamba(8, d_state=4, expand=2, directions=2, backend="torch").double()
    x = torch.randn(1, 10, 8, dtype=torch.float64)
    fwd, bwd = m.forward_directions(x)
    x2 = x.clone()
    x2[:, 6] += 1.0
    fwd2, bwd2 = m.forward_directions(x2)
    assert torch.equal(fwd2[:, :6], fwd[:, :6]) and (fwd2[:, 6:] - fwd[:, 6:]).abs().amax() > 1e-6
    assert torch.equal(bwd2[:, 7:], bwd[:, 7:]) and (bwd2[:, :7] - bwd[:, :7]).abs().amax() > 1e-6


def test_vim_block_is_add_norm_mix_with_the_residual_in_float32(seed):
    blk = VimBlock(16, d_state=4, backend="torch")
    assert blk.mixer.num_directions == 2 and blk.mixer.d_inner == 32 and isinstance(blk.norm, torch.nn.RMSNorm)
    assert not any(n.startswith("mlp") for n, _ in blk.named_parameters())
    x = torch.randn(2, 5, 16)
    h = blk.mixer(x * torch.rsqrt(x.square().mean(-1, keepdim=True) + 1e-5) * blk.norm.weight)
    assert torch.allclose(blk(x), x + h, atol=1e-6)
    assert blk(x.bfloat16()).dtype == torch.float32  # the residual stream never in half precision


# ---------------------------------------------------------------------------------------------
# official checkpoints: the converted model computes what the reference computes
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [EVEN, ODD], ids=["8x8", "7x7"])
def test_official_vim_checkpoint_computes_reference_logits_and_gradients(tmp_path, size, seed):
    sd = make_official_vim_state_dict(**size, seed=size["grid"])
    model = load_official(_save(tmp_path, official_vim_pickle(sd)), backend="torch")
    img = size["grid"] * size["patch"]
    assert isinstance(model, ARMClassifier) and model.block == "vim" and model.global_pool == "token"
    assert model.config["img_size"] == (img, img) and model.config["directions"] == 2
    assert model.config["expand"] == 2 and model.num_classes == size["num_classes"]
    ref_sd = {k: v.requires_grad_() for k, v in _f64(sd).items()}
    model = model.double().eval()
    x = torch.randn(2, 3, img, img, dtype=torch.float64)
    x_ref, x_mine = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref, mine = reference_vim_logits(ref_sd, x_ref), model(x_mine)
    assert rel_err(mine, ref) < 1e-12
    w = torch.randn_like(ref)
    (ref * w).sum().backward()
    (mine * w).sum().backward()
    assert rel_err(x_mine.grad, x_ref.grad) < 1e-11
    for name, p in model.named_parameters():
        assert rel_err(p.grad, ref_sd[name].grad) < 1e-10, name
    # the normed tokens, and in float32 as one would run it
    tokens, _ = reference_vim_features(_f64(sd), x)
    assert rel_err(model.forward_features(x), tokens) < 1e-12
    assert rel_err(model.float()(x.float()), reference_vim_logits(sd, x.float())) < 1e-5


def test_every_official_vim_tensor_lands_under_its_own_name():
    sd = make_official_vim_state_dict(**EVEN)
    model = load_official(official_vim_pickle(sd))
    ours = model.state_dict()
    assert set(ours) == set(sd)
    assert all(torch.equal(ours[k], v) for k, v in sd.items())
    assert model.model_name is None  # a 32-wide Vim has no registry name


def test_plain_weights_by_default_as_the_reference_evaluates(tmp_path):
    sd = make_official_vim_state_dict(**EVEN)
    ckpt = official_vim_pickle(sd)  # model_ema = model + 1
    path = _save(tmp_path, ckpt)
    read = read_official_checkpoint(path)
    assert read.family == "Vim" and read.kind == "classifier" and read.state_dict_key == "model"
    assert read.epoch == 299 and read.args["model"] == TINY
    assert torch.equal(read.state_dict["norm_f.weight"], sd["norm_f.weight"])
    ema = read_official_checkpoint(path, ema=True)
    assert ema.state_dict_key == "model_ema" and torch.equal(ema.state_dict["norm_f.weight"], sd["norm_f.weight"] + 1)
    only_ema = {k: v for k, v in ckpt.items() if k != "model"}
    assert read_official_checkpoint(only_ema).state_dict_key == "model_ema"
    with pytest.raises(CheckpointError, match="no 'model' state dict"):
        read_official_checkpoint(only_ema, ema=False)
    w = read_weights(path)
    assert w.kind == "classifier" and w.description == "official Vim finetuning checkpoint"
    assert w.config["architecture"] == "ARMClassifier" and w.args["block"] == "vim"


def test_official_vim_to_armvision_to_official_is_bit_exact(tmp_path):
    sd = make_official_vim_state_dict(**ODD, dtype=torch.float32)
    model = load_official(_save(tmp_path, official_vim_pickle(sd)))
    path = save_official(model, tmp_path / "back.pth", strict=False)  # 24 wide, 3 deep: not a registered size
    back = safe_torch_load(path)
    assert isinstance(back["args"], argparse.Namespace) and back["args"].nb_classes == 5
    assert set(back["model"]) == set(sd)
    for k, v in sd.items():
        assert back["model"][k].dtype == v.dtype and torch.equal(back["model"][k], v), k
    again = load_official(path)
    assert again.config == model.config


def test_armvision_vim_to_official_to_armvision_is_bit_exact(tmp_path):
    model = armvision.create_model("vim_tiny_pz16", img_size=32, num_classes=7)  # Vim-T's width and depth
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    path = save_official(model, tmp_path / "vim.pth")  # strict: the reference's Vim-T runs it
    back = safe_torch_load(path)
    assert back["args"].model == REFERENCE_NAMES["vim_tiny_pz16"] and back["args"].input_size == 32
    loaded = load_official(path)
    assert loaded.config == model.config and loaded.model_name == "vim_tiny_pz16"
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k


def test_official_vim_errors(tmp_path):
    sd = make_official_vim_state_dict(**EVEN)
    stride8 = REFERENCE_NAMES["vim_tiny_pz16"].replace("patch16", "patch16_stride8")
    with pytest.raises(CheckpointError, match=r"reference model 'vim_tiny_patch16_stride8.*\(patch 16 with stride 8"):
        load_official(official_vim_pickle(sd, model=stride8))
    broken = {k: v for k, v in sd.items() if k != "layers.1.mixer.x_proj_b.weight"}
    with pytest.raises(CheckpointError, match=r"does not match the Vim model.*1 missing key\(s\): "
                                              r"layers\.1\.mixer\.x_proj_b\.weight"):
        load_official(official_vim_pickle(broken))
    with pytest.raises(CheckpointError, match="without the backward scan"):
        load_official({k: v for k, v in sd.items() if "_b" not in k})
    with pytest.raises(CheckpointError, match="not a square grid"):
        load_official(dict(sd, pos_embed=torch.zeros(1, 12, 32)))
    model = load_official(sd)
    with pytest.raises(CheckpointError, match=r"no official Vim checkpoint: width 32, depth 2, patch 4 .*strict=False"):
        save_official(model, tmp_path / "x.pth")
    four = armvision.create_model("vim_tiny_pz16", img_size=32, depth=2, directions=4, global_pool="avg")
    with pytest.raises(CheckpointError, match=r"4 scan direction\(s\).*global_pool='avg'"):
        save_official(four, tmp_path / "x.pth")
    pre = armvision.create_model("vim_tiny_pz16", pretraining=True, img_size=64, cluster_size=2, depth=6)
    with pytest.raises(CheckpointError, match="ARM pretraining of a Vim encoder has no reference code"):
        save_official(pre, tmp_path / "x.pth")


@pytest.mark.parametrize("name, width, published", [("vim_tiny_pz16", 192, 7), ("vim_small_pz16", 384, 26),
                                                     ("vim_base_pz16", 768, 98)])
def test_published_sizes(name, width, published):
    """Vim-T/S/B at 224 px, 1000 classes: the reference layout's parameter count (shapes only) is the model's, and
    rounds to the published 7M, 26M, 98M."""
    layout = make_official_vim_state_dict(embed_dim=width, depth=24, d_state=16, patch=16, grid=14,
                                          num_classes=1000, meta=True)
    args = infer_vim_model_args(layout, {"model": REFERENCE_NAMES[name]})
    with torch.device("meta"):
        model = armvision.create_model(name)
        converted = ARMClassifier(**args)
    assert model.config == converted.config
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in layout.items()}
    n = sum(p.numel() for p in model.parameters())
    assert n == sum(v.numel() for v in layout.values()) and round(n / 1e6) == published


# ---------------------------------------------------------------------------------------------
# ARM pretraining of a Vim encoder, and fine-tuning from it
# ---------------------------------------------------------------------------------------------
PRE = dict(img_size=32, patch_size=4, cluster_size=2, embed_dim=16, depth=6, d_state=4, decoder_dim=32,
           backend="torch")


def test_vim_pretraining_encoder_is_causal(seed):
    model = armvision.create_model("vim_tiny_pz16", pretraining=True, **PRE).double()
    assert model.block == "vim" and all(blk.mixer.num_directions == 1 for blk in model.layers)
    assert model.layers[0].mixer.d_inner == 32 and isinstance(model.layers[0], VimBlock)
    x = torch.randn(2, model.num_input_tokens, 16, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 20] += 1.0

    def encode(h):
        for blk in model.layers:
            h = blk(h)
        return h

    y, y2 = encode(x), encode(x2)
    assert torch.equal(y[:, :20], y2[:, :20]) and (y[:, 20:] - y2[:, 20:]).abs().amax() > 1e-6
    loss = model(torch.randn(2, 3, 32, 32, dtype=torch.float64))
    loss.backward()
    assert loss.ndim == 0 and all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_finetuning_from_vim_pretraining_copies_forward_into_backward(tmp_path, seed):
    pre = armvision.create_model("vim_tiny_pz16", pretraining=True, **PRE)
    armvision.save_model(pre, tmp_path / "pre")
    pre = armvision.load_model(tmp_path / "pre")
    assert pre.config["block"] == "vim" and pre.config["expand"] == 2
    clf = armvision.create_model("vim_tiny_pz16", img_size=48, patch_size=4, embed_dim=16, depth=6, d_state=4,
                                 num_classes=3, backend="torch")
    armvision.init_classifier_from_pretraining(clf, pre)
    for i, (a, b) in enumerate(zip(pre.layers, clf.layers)):
        assert torch.equal(a.norm.weight, b.norm.weight)
        for s in ("", "_b"):
            assert torch.equal(getattr(b.mixer, f"A{s}_log"), a.mixer.A_log)
            assert torch.equal(getattr(b.mixer, "dt_proj" + s).bias, a.mixer.dt_proj.bias)
            assert torch.equal(getattr(b.mixer, "conv1d" + s).weight, a.mixer.conv1d.weight)
    assert clf.pos_embed.shape == (1, 145, 16) and torch.equal(clf.pos_embed[0, 72], torch.zeros(16))
    assert clf(torch.randn(2, 3, 48, 48)).shape == (2, 3)
    # what finetune --init does with a run directory: the Vim classifier its weights describe
    w = read_weights(tmp_path / "pre")
    clf2 = classifier_for(w, num_classes=3)
    assert (clf2.block, clf2.config["directions"], clf2.global_pool, clf2.config["expand"]) == ("vim", 2, "token", 2)
    init_classifier(clf2, w)
    assert torch.equal(clf2.layers[5].mixer.x_proj_b.weight, pre.layers[5].mixer.x_proj.weight)
    mlp = armvision.create_model("arm_tiny_pz16", img_size=48, patch_size=4, embed_dim=16, depth=6, d_state=4)
    with pytest.raises(KeyError, match="do not fit this classifier"):
        armvision.init_classifier_from_pretraining(mlp, pre)
    with pytest.raises(CheckpointError, match="does not fit this classifier: block: checkpoint vim, classifier "
                                              "mambamlp; expand: checkpoint 2, classifier 1"):
        init_classifier(mlp, w)


def test_vim_drop_path_rates_are_the_references_linear_schedule():
    """The reference drops block i's mixer output at rate * i / (depth - 1) (the last at the full rate, in the
    final norm); ARM's blocks keep their schedule shifted by one block."""
    vim = armvision.create_model("vim_tiny_pz16", img_size=32, depth=5, drop_path_rate=0.4)
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for b in vim.layers]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    arm = armvision.create_model("arm_tiny_pz16", img_size=32, depth=5, drop_path_rate=0.4)
    assert [getattr(b.drop_path, "drop_prob", 0.0) for b in arm.layers] == pytest.approx([0.0, 0.0, 0.1, 0.2, 0.3])


# ---------------------------------------------------------------------------------------------
# names, timm, backends
# ---------------------------------------------------------------------------------------------
def test_vim_names_and_errors():
    with torch.device("meta"):
        m = armvision.create_model("vim_small_pz16")
        p = armvision.create_model("vim_small_pz16", pretraining=True)
    assert (m.config["embed_dim"], m.config["depth"], m.config["directions"], m.global_pool) == (384, 24, 2, "token")
    assert m.head_init_std == 0.02 and isinstance(m.norm_f, torch.nn.RMSNorm) and m.model_name == "vim_small_pz16"
    assert p.config["block"] == "vim" and p.memory_layers == (12, 16, 20, 24) and p.geometry.img_size == (192, 192)
    with pytest.raises(ValueError, match="block 'mamba2': expected one of mambamlp, vim"):
        armvision.create_model("vim_tiny_pz16", block="mamba2")
    with pytest.raises(ValueError, match="expand must be a positive integer, got 0"):
        ARMClassifier(expand=0)


def test_timm_vim_with_official_weights(tmp_path, seed, monkeypatch):
    sd = make_official_vim_state_dict(embed_dim=192, depth=2, d_state=16, patch=16, grid=2, num_classes=4)
    path = _save(tmp_path, official_vim_pickle(sd))
    model = timm.create_model("vim_tiny_pz16", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                              img_size=32, depth=2, num_classes=4)
    assert model.pretrained_cfg["crop_pct"] == 0.875 and model.pretrained_cfg["crop_mode"] == "center"
    assert model.pretrained_cfg["hf_hub_id"] == "hustvl/Vim-tiny-midclstok"
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(model.eval()(x), load_official(path).eval()(x), atol=1e-6)
    # without a file: the registered Hub file, read by armvision's safe loader
    calls = []
    monkeypatch.setattr("huggingface_hub.hf_hub_download",
                        lambda repo_id, filename, cache_dir=None, **kw: calls.append((repo_id, filename)) or str(path))
    hub = timm.create_model("vim_tiny_pz16", pretrained=True, img_size=32, depth=2)
    assert calls == [("hustvl/Vim-tiny-midclstok", "vim_t_midclstok_76p1acc.pth")] and hub.num_classes == 4
    with pytest.raises(RuntimeError, match="no verified download location .* repository 'hustvl/Vim-base-midclstok'"):
        timm.create_model("vim_base_pz16", pretrained=True)
    fresh = timm.create_model("vim_base_pz16", pretrained=False, img_size=32, depth=1, num_classes=0)
    assert fresh.config["directions"] == 2 and fresh.num_classes == 0


@pytest.mark.skipif(not ops.backend_available("triton", "cuda" if torch.cuda.is_available() else "cpu"),
                    reason="the Triton backend cannot run here")
def test_two_direction_mixer_on_triton_matches_torch(seed):
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    m = Mamba(8, d_state=4, expand=2, directions=2).to(dev)
    x = torch.randn(2, 7, 8, device=dev, requires_grad=True)
    outs = {}
    for backend in ("torch", "triton"):
        m.backend = backend
        y = m(x)
        gx, = torch.autograd.grad(y.square().sum(), x)
        outs[backend] = (y.detach(), gx)
    assert rel_err(outs["triton"][0], outs["torch"][0]) < 1e-5
    assert rel_err(outs["triton"][1], outs["torch"][1]) < 1e-4


def test_published_parameter_count_formula():
    """The counts above, by hand from the reference's module shapes (no model built): per block in_proj 2Ed, per
    direction conv E*5, x_proj E(R + 2N), dt_proj R*E + E, A_log E*N, D E; out_proj Ed; norm d."""
    def count(d, depth=24, n=16, classes=1000, tokens=197):
        e, r = 2 * d, math.ceil(d / 16)
        per_dir = e * 5 + e * (r + 2 * n) + r * e + e + e * n + e
        block = 2 * e * d + 2 * per_dir + e * d + d
        return depth * block + (3 * 256 * d + d) + tokens * d + d + d + (d * classes + classes)

    assert [count(d) for d in (192, 384, 768)] == [7148008, 25796584, 97598440]
    with torch.device("meta"):
        assert sum(p.numel() for p in armvision.create_model("vim_tiny_pz16").parameters()) == 7148008


def test_vim_is_evaluated_as_the_reference_vim_code_and_arm_as_the_arm_code():
    """Vim (DeiT's eval): shorter side to size / 0.875, center crop; ARM: squash, crop 224/256 (1.0 above 224)."""
    from armvision.data import data_config

    vim = armvision.create_model("vim_tiny_pz16", embed_dim=16, depth=1, num_classes=3)
    arm = armvision.create_model("arm_tiny_pz16", embed_dim=16, depth=1, num_classes=3)
    assert (data_config(vim)["crop_mode"], data_config(vim)["crop_pct"]) == ("center", 0.875)
    assert (data_config(vim, 384)["crop_mode"], data_config(vim, 384)["crop_pct"]) == ("center", 0.875)
    assert (data_config(arm)["crop_mode"], data_config(arm)["crop_pct"]) == ("squash", 224 / 256)
    assert data_config(arm, 384)["crop_pct"] == 1.0
    cfg = timm.create_model("vim_tiny_pz16", pretrained=False, embed_dim=16, depth=1).pretrained_cfg
    assert (cfg["crop_mode"], cfg["crop_pct"]) == ("center", 0.875)
