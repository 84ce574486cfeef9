"""The Mamba mixer's four directions, the blocks, position embeddings and initialisation."""

import math

import pytest
import torch
import torch.nn.functional as F

from armvision.layers import (
    DIRECTIONS,
    Mamba,
    MambaMLPBlock,
    TokenLayout,
    direction_index,
    resize_pos_embed,
    sincos_pos_embed_2d,
)


def make_mixer(dim=16, equal_directions=True):
    m = Mamba(dim, d_state=4, directions=4).double()
    with torch.no_grad():
        for p in m.parameters():  # move away from the init so that every parameter matters
            p.add_(torch.randn_like(p) * 0.1)
        if equal_directions:
            for i in range(1, 4):
                for dst, src in zip(m.direction_params(i), m.direction_params(0)):
                    (dst.weight if hasattr(dst, "weight") else dst).copy_(src.weight if hasattr(src, "weight") else src)
                    if hasattr(dst, "bias") and dst.bias is not None:
                        dst.bias.copy_(src.bias)
    return m


def transpose_tokens(x, grid, cls_index):
    """Tokens of a (rows, cols) grid with a class token at cls_index -> tokens of the transposed
    grid, class token at the same index."""
    rows, cols = grid
    cls = x[:, cls_index:cls_index + 1]
    patches = torch.cat([x[:, :cls_index], x[:, cls_index + 1:]], dim=1)
    patches = patches.reshape(x.shape[0], rows, cols, -1).transpose(1, 2).reshape(x.shape[0], rows * cols, -1)
    return torch.cat([patches[:, :cls_index], cls, patches[:, cls_index:]], dim=1)


@pytest.mark.parametrize("grid", [(4, 4), (3, 5)])
def test_transposing_the_grid_swaps_row_and_column_directions(seed, grid):
    """With equal parameters in all directions, the column scans of x see exactly what the row
    scans of the transposed grid see: out_column(x) = T^-1 out_forward(T x), and so on."""
    layout = TokenLayout(grid, (grid[0] * grid[1]) // 2)
    tlayout = TokenLayout(grid[::-1], layout.cls_index)
    m = make_mixer()
    x = torch.randn(2, layout.num_tokens, 16, dtype=torch.float64)
    xt = transpose_tokens(x, grid, layout.cls_index)
    o = m.forward_directions(x, layout)
    ot = [transpose_tokens(y, grid[::-1], layout.cls_index) for y in m.forward_directions(xt, tlayout)]
    for mine, theirs in [(0, 2), (1, 3), (2, 0), (3, 1)]:
        assert torch.allclose(o[mine], ot[theirs], atol=1e-12), (DIRECTIONS[mine][0], DIRECTIONS[theirs][0])
    assert not torch.allclose(o[0], o[2], atol=1e-6)  # the property is not trivially true
    # the whole mixer commutes with the transpose
    assert torch.allclose(transpose_tokens(m(xt, tlayout), grid[::-1], layout.cls_index), m(x, layout), atol=1e-12)


@pytest.mark.parametrize("direction", [d for d, _ in DIRECTIONS])
def test_each_direction_is_causal_in_its_own_order(seed, direction):
    """Perturbing the token at sequence position k of a direction changes that direction's outputs
    exactly at positions >= k of its sequence (a wrong index map breaks this)."""
    grid = (3, 4)
    layout = TokenLayout(grid, 6)
    i = [d for d, _ in DIRECTIONS].index(direction)
    m = make_mixer(equal_directions=False)
    x = torch.randn(1, layout.num_tokens, 16, dtype=torch.float64)
    seq, _ = direction_index(layout, direction)
    base = m.forward_directions(x, layout)[i]
    for k in (0, 5, 6, layout.num_tokens - 1):
        x2 = x.clone()
        x2[0, seq[k]] += 1.0
        changed = (m.forward_directions(x2, layout)[i] - base).abs().amax(-1)[0] > 1e-9  # row-major tokens
        changed_in_seq = changed[seq]
        assert not changed_in_seq[:k].any() and changed_in_seq[k:].all(), (direction, k)


def test_direction_index_maps():
    layout = TokenLayout((2, 3), 3)  # patches 0 1 2 | 3 4 5 with the class token inserted at 3
    fwd, fwd_inv = direction_index(layout, "forward")
    assert fwd.tolist() == list(range(7)) and fwd_inv.tolist() == list(range(7))
    assert direction_index(layout, "backward")[0].tolist() == list(range(6, -1, -1))
    # row-major sequence positions: p0 p1 p2 cls p3 p4 p5 = 0 1 2 3 4 5 6; column-major patches:
    # p0 p3 p1 p4 p2 p5 = 0 4 1 5 2 6, class token put back at index 3
    col, col_inv = direction_index(layout, "column")
    assert col.tolist() == [0, 4, 1, 3, 5, 2, 6]
    assert col[col_inv].tolist() == list(range(7))
    assert direction_index(layout, "column_backward")[0].tolist() == [6, 2, 5, 3, 1, 4, 0]
    with pytest.raises(ValueError, match="unknown direction"):
        direction_index(layout, "diagonal")


def test_mixer_averages_directions(seed):
    m = make_mixer(equal_directions=False)
    layout = TokenLayout((3, 3), 4)
    x = torch.randn(2, 10, 16, dtype=torch.float64)
    outs = m.forward_directions(x, layout)
    assert torch.allclose(m(x, layout), m.out_proj(sum(outs) / 4), atol=1e-12)
    with pytest.raises(ValueError, match="needs the token layout"):
        m(x)
    with pytest.raises(ValueError, match="has 10 tokens, the input 9"):
        m(x[:, :9], layout)


def test_one_direction_mixer_is_causal(seed):
    m = Mamba(16, d_state=4).double()
    x = torch.randn(1, 9, 16, dtype=torch.float64)
    x2 = x.clone()
    x2[0, 5] += 1
    d = (m(x2) - m(x)).abs().amax(-1)[0]
    assert (d[:5] == 0).all() and (d[5:] > 0).all()


def test_block_residual_structure(seed):
    blk = MambaMLPBlock(16, d_state=4).double()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    h = x + blk.mixer(blk.norm1(x))
    assert torch.allclose(blk(x), h + blk.mlp(blk.norm2(h)), atol=1e-12)
    assert blk.mlp.w1.out_features == 16 * 4 * 2 // 3


def test_swiglu_one_product_matches_two(seed, monkeypatch):
    """SwiGLU.fused (ARMVISION_SWIGLU=fused, for A/B runs): w1 x and w2 x as one product on the stacked weights give
    the two products' values and gradients, with the same parameters."""
    from armvision.layers.block import SwiGLU

    monkeypatch.setenv("ARMVISION_SWIGLU", "fused")
    m = SwiGLU(16).double()
    assert m.fused and set(dict(m.named_parameters())) == {f"w{i}.{k}" for i in (1, 2, 3) for k in ("weight", "bias")}
    x = torch.randn(2, 5, 16, dtype=torch.float64, requires_grad=True)
    got = {}
    for fused in (True, False):
        m.fused = fused
        m.zero_grad()
        y = m(x)
        gx, = torch.autograd.grad(y.square().sum(), x, retain_graph=True)
        y.square().sum().backward()
        got[fused] = [y, gx] + [p.grad.clone() for p in m.parameters()]
    for a, b in zip(got[True], got[False]):
        assert torch.allclose(a, b, atol=1e-12, rtol=1e-10)
    monkeypatch.delenv("ARMVISION_SWIGLU")
    assert not SwiGLU(16).fused


def test_layer_switches_refuse_unknown_values(monkeypatch):
    """ARMVISION_IN_PROJ / ARMVISION_SWIGLU: "split" (also unset or empty) or "fused"; a typo is an error naming the
    variable and the choices when the layer is built (and before any work from the command, tests/test_triton_kernels)
    instead of silently measuring the default."""
    from armvision.errors import ConfigError
    from armvision.layers.block import SwiGLU

    for variable, build, attr in (("ARMVISION_SWIGLU", lambda: SwiGLU(8), "fused"),
                                  ("ARMVISION_IN_PROJ", lambda: Mamba(8, d_state=4), "in_proj_split")):
        for value, expected in (("", attr == "in_proj_split"), ("split", attr == "in_proj_split"),
                                (" fused ", attr == "fused")):
            monkeypatch.setenv(variable, value)
            assert getattr(build(), attr) is expected
        monkeypatch.setenv(variable, "fuse")
        with pytest.raises(ConfigError, match=rf"^{variable}='fuse': expected one of 'split', 'fused' \(or unset\)$"):
            build()
        monkeypatch.delenv(variable)
    # ARMVISION_SWIGLU_GATE: "graph" (also unset or empty) or "kernel"
    for value, expected in (("", False), ("graph", False), ("kernel", True)):
        monkeypatch.setenv("ARMVISION_SWIGLU_GATE", value)
        assert SwiGLU(8).gate_kernel is expected
    monkeypatch.setenv("ARMVISION_SWIGLU_GATE", "kernels")
    with pytest.raises(ConfigError, match=r"^ARMVISION_SWIGLU_GATE='kernels': expected one of 'graph', 'kernel' "):
        SwiGLU(8)


def test_mamba_init(seed):
    m = Mamba(64, d_state=16, directions=4)
    assert m.dt_rank == 4 and m.d_inner == 64
    for i in range(4):
        conv, x_proj, dt_proj, A_log, D = m.direction_params(i)
        assert torch.allclose(A_log, torch.log(torch.arange(1, 17).float()).expand(64, 16))
        assert torch.equal(D, torch.ones(64))
        dt = F.softplus(dt_proj.bias)
        assert dt.min() >= 1e-4 * 0.999 and dt.max() <= 0.1 * 1.001 and dt.min() < 0.01 < dt.max()
        assert dt_proj.weight.abs().max() <= 4**-0.5
        assert x_proj.weight.shape == (4 + 32, 64) and conv.weight.shape == (64, 1, 4)
        assert A_log._no_weight_decay and D._no_weight_decay
    assert m.in_proj.bias is None and m.out_proj.bias is None


def test_sincos_pos_embed_values():
    """MAE's layout: first half encodes the column, second half the row; [sin, cos] in each."""
    dim, grid = 32, (3, 5)
    pe = sincos_pos_embed_2d(dim, grid)
    assert pe.shape == (15, dim) and pe.dtype == torch.float32
    for r in range(3):
        for c in range(5):
            tok = pe[r * 5 + c]
            assert math.isclose(tok[0], math.sin(c), abs_tol=1e-6)  # column, lowest frequency 1
            assert math.isclose(tok[8], math.cos(c), abs_tol=1e-6)
            assert math.isclose(tok[16], math.sin(r), abs_tol=1e-6)  # row
            assert math.isclose(tok[24], math.cos(r), abs_tol=1e-6)
            assert math.isclose(tok[1], math.sin(c / 10000 ** (1 / 8)), abs_tol=1e-6)
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_pos_embed_2d(30, grid)


def test_resize_pos_embed(seed):
    pos = torch.randn(1, 12 * 12, 8)
    out = resize_pos_embed(pos, (12, 12), (14, 14))
    expected = F.interpolate(pos.reshape(1, 12, 12, 8).permute(0, 3, 1, 2), size=(14, 14), mode="bicubic",
                             align_corners=False).permute(0, 2, 3, 1).reshape(1, 196, 8)
    assert torch.allclose(out, expected)
    assert resize_pos_embed(pos, (12, 12), (12, 12)) is pos
    with pytest.raises(ValueError, match="not a 10x10 grid"):
        resize_pos_embed(pos, (10, 10), (14, 14))


def test_a_first_use_under_inference_mode_does_not_break_training(seed):
    """The direction maps are cached: the first forward may come from feature extraction under
    torch.inference_mode(), and a later training step must still be able to save them for backward."""
    m = Mamba(8, d_state=4, directions=4)
    layout = TokenLayout((3, 5), 7)  # a layout no other test uses, so that this test makes its cache entries
    x = torch.randn(2, 16, 8)
    with torch.inference_mode():
        m(x, layout)
    y = m(x.requires_grad_(), layout)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("chans,size,strict", [(3, (32, 48), True), (1, (24, 40), False)])
def test_patch_embed_matmul_matches_timm_conv(chans, size, strict):
    """armvision's PatchEmbed (one matrix product) equals timm's strided convolution: values and gradients."""
    from timm.layers import PatchEmbed as TimmPatchEmbed

    from armvision.layers import PatchEmbed

    torch.manual_seed(0)
    ours = PatchEmbed(size, 8, chans, 16, strict_img_size=strict)
    ref = TimmPatchEmbed(size, 8, chans, 16, strict_img_size=strict)
    ref.load_state_dict(ours.state_dict())  # same parameter names and shapes
    assert [n for n, _ in ours.named_parameters()] == ["proj.weight", "proj.bias"]
    in_size = size if strict else (16, 56)  # a non-strict embed takes any multiple of the patch
    x = torch.randn(2, chans, *in_size, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    out, want = ours(x), ref(x2)
    assert out.shape == want.shape == (2, (in_size[0] // 8) * (in_size[1] // 8), 16)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(out)
    out.backward(g)
    want.backward(g)
    torch.testing.assert_close(x.grad, x2.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.proj.weight.grad, ref.proj.weight.grad, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(ours.proj.bias.grad, ref.proj.bias.grad, atol=1e-4, rtol=1e-5)
    bad = (size[0] + 8, size[1]) if strict else (size[0] + 3, size[1])
    with pytest.raises(ValueError, match="input images are"):
        ours(torch.randn(1, chans, *bad))
