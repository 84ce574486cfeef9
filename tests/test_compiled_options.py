"""ARMVISION_INDUCTOR: extra inductor options for A/B runs of the commands, merged with the compile mode's own."""

import pytest
import torch

from armvision.errors import UserError
from armvision.train import compiled
from armvision.train.compiled import CompiledModule, inductor_options


def test_inductor_options_merge_the_mode_and_the_environment():
    assert inductor_options("reduce-overhead", {}) is None  # unset: torch.compile takes the mode itself
    got = inductor_options("reduce-overhead", {"ARMVISION_INDUCTOR": '{"combo_kernels": true}'})
    assert got == {"triton.cudagraphs": True, "combo_kernels": True}
    assert inductor_options("default", {"ARMVISION_INDUCTOR": '{"triton.cudagraphs": false}'}) == {
        "triton.cudagraphs": False}
    for bad in ("[1]", "{combo_kernels: 1}"):
        with pytest.raises(UserError, match="ARMVISION_INDUCTOR must be a JSON object"):
            inductor_options("default", {"ARMVISION_INDUCTOR": bad})


def test_compiled_module_passes_the_options_and_follows_their_cudagraphs(monkeypatch):
    seen = {}

    def fake_compile(module, **kw):
        seen.update(kw)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setenv("ARMVISION_INDUCTOR", '{"combo_kernels": true, "triton.cudagraphs": false}')
    cm = CompiledModule(torch.nn.Linear(2, 2), True, mode="reduce-overhead")
    assert seen["options"] == {"triton.cudagraphs": False, "combo_kernels": True} and "mode" not in seen
    assert cm.cudagraphs is False
    monkeypatch.delenv("ARMVISION_INDUCTOR")
    seen.clear()
    cm = CompiledModule(torch.nn.Linear(2, 2), True, mode="reduce-overhead")
    assert seen["mode"] == "reduce-overhead" and "options" not in seen and cm.cudagraphs
    assert compiled.compile_mode("auto", torch.device("cpu"), 1) == "default"
