"""The pretraining model's ablation knobs: prediction unit, cluster order, target."""

import pytest
import torch

import armvision
from armvision.models import ARMPretrain, Geometry

SMALL_PRE = dict(embed_dim=16, depth=2, d_state=4, decoder_dim=32, memory_layers=(1, 2), img_size=16, patch_size=4,
                 in_chans=1)


def test_geometry_orders():
    # 4x4 patch grid, clusters of 2x2 patches: a 2x2 cluster grid
    row = Geometry((8, 8), 2, 2).cluster_order().tolist()
    assert row == [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]
    col = Geometry((8, 8), 2, 2, order="column").cluster_order().tolist()
    assert col == [0, 4, 1, 5, 8, 12, 9, 13, 2, 6, 3, 7, 10, 14, 11, 15]  # the transpose of the row order
    rnd = Geometry((8, 8), 2, 2, order="random", order_seed=3)
    perm = rnd.cluster_permutation()
    assert sorted(perm.tolist()) == [0, 1, 2, 3]
    assert torch.equal(perm, Geometry((8, 8), 2, 2, order="random", order_seed=3).cluster_permutation())  # fixed
    clusters = torch.tensor(row).view(4, 4)
    assert rnd.cluster_order().tolist() == clusters[perm].reshape(-1).tolist()
    seeds = {tuple(Geometry((16, 16), 2, 2, order="random", order_seed=s).cluster_permutation().tolist())
             for s in range(5)}
    assert len(seeds) > 1  # the seed matters
    with pytest.raises(ValueError, match="cluster order 'diagonal'"):
        Geometry((8, 8), 2, 2, order="diagonal")


@pytest.mark.parametrize("cluster_size,tokens", [(1, 15), (2, 12), (4, None)])
def test_prediction_unit(cluster_size, tokens):
    if tokens is None:  # a 4x4 grid is one cluster of 4x4 patches: nothing to predict
        with pytest.raises(ValueError, match="at least two"):
            ARMPretrain(**SMALL_PRE, cluster_size=cluster_size)
        return
    m = ARMPretrain(**SMALL_PRE, cluster_size=cluster_size)
    pred, target = m.predict(torch.randn(2, 1, 16, 16))
    assert pred.shape == target.shape == (2, tokens, 16)


@pytest.mark.parametrize("order", ["row", "column", "random"])
def test_order_follows_in_encoder_decoder_and_no_leak(seed, order):
    """Perturbing the k-th cluster visited changes no prediction of clusters visited up to k, and changes every
    later one; the query positions are those of the clusters being predicted, in that order."""
    torch.manual_seed(0)
    m = ARMPretrain(**dict(SMALL_PRE, img_size=(16, 24)), cluster_size=2, cluster_order=order, order_seed=5)
    m = m.double().eval()
    geo = m.geometry
    s, cw, cp = geo.patches_per_cluster, geo.cluster_grid[1], 2 * geo.patch_size
    assert m.config["cluster_order"] == order and m.config["order_seed"] == 5
    perm = geo.cluster_permutation()
    if order == "row":
        assert perm.tolist() == list(range(geo.num_clusters))
    else:
        assert perm.tolist() != list(range(geo.num_clusters))
    assert torch.equal(m.cluster_order, geo.cluster_order())
    x = torch.randn(1, 1, 16, 24, dtype=torch.float64)
    base, target = m.predict(x)
    # target row i is the (normalised) patch visited at position s + i
    patches = m.patchify(x)[0, geo.cluster_order()[s:]]
    expected = (patches - patches.mean(-1, keepdim=True)) / (patches.var(-1, keepdim=True) + 1e-6).sqrt()
    assert torch.allclose(target[0].double(), expected, atol=1e-5)
    for step in range(geo.num_clusters):
        r, c = divmod(int(perm[step]), cw)
        x2 = x.clone()
        x2[..., r * cp:(r + 1) * cp, c * cp:(c + 1) * cp] += torch.randn(1, cp, cp, dtype=torch.float64)
        pred, _ = m.predict(x2)
        diff = (pred - base).abs().amax(-1)[0].view(-1, s).amax(-1)  # per predicted cluster (steps 1..K-1)
        predicted = torch.arange(1, geo.num_clusters)
        assert (diff[predicted <= step] == 0).all(), f"step {step} leaks into earlier predictions ({order})"
        assert (diff[predicted > step] > 1e-9).all(), f"step {step} does not reach later predictions ({order})"


def test_random_order_round_trips_through_the_config(tmp_path):
    m = ARMPretrain(**SMALL_PRE, cluster_size=1, cluster_order="random", order_seed=7)
    armvision.save_model(m, tmp_path / "m")
    m2 = armvision.load_model(tmp_path / "m")
    assert torch.equal(m2.cluster_order, m.cluster_order)
    x = torch.randn(1, 1, 16, 16)
    assert torch.allclose(m2(x), m(x))


def test_target_pix_and_norm_pix():
    x = torch.randn(2, 1, 16, 16) * 3 + 1
    norm = ARMPretrain(**SMALL_PRE, cluster_size=2)
    raw = ARMPretrain(**SMALL_PRE, cluster_size=2, target="pix")
    assert norm.target == "norm_pix" and norm.norm_pix_loss and raw.config["target"] == "pix"
    assert not raw.norm_pix_loss
    order = raw.cluster_order[4:]
    assert torch.equal(raw.targets(x), raw.patchify(x)[:, order])
    t = norm.targets(x)
    assert torch.allclose(t.mean(-1), torch.zeros(2, 12), atol=1e-5)
    assert torch.allclose(t.std(-1), torch.ones(2, 12), atol=1e-4)
    assert ARMPretrain(**SMALL_PRE, cluster_size=2, norm_pix_loss=False).target == "pix"  # older spelling
    with pytest.raises(ValueError, match="contradicts"):
        ARMPretrain(**SMALL_PRE, cluster_size=2, norm_pix_loss=True, target="pix")
    with pytest.raises(ValueError, match="target 'dvae'"):
        ARMPretrain(**SMALL_PRE, cluster_size=2, target="dvae")


def test_knobs_are_config_keys(tmp_path):
    from armvision.train import build_model_from_config, load_config

    cfg = load_config("fmnist_pretrain", {"model.args.cluster_order": "column", "model.args.target": "pix",
                                          "model.args.cluster_size": 1})
    m = build_model_from_config(cfg)
    assert m.geometry.order == "column" and m.target == "pix" and m.geometry.cluster_size == 1
