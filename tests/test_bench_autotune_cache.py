"""benchmarks/_autotune_cache.py: inductor's GEMM autotuning timings seeded into a machine's cache and written
back, and torch's own lookup then finding the seeded timings instead of timing again."""

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
import _autotune_cache as ac  # noqa: E402

SYSTEM = {"device": {"name": "NVIDIA H100 80GB HBM3"}, "version": {"triton": "k", "cuda": "13.0"}, "hash": "abc123"}


def _file(cache: dict) -> dict:
    return {"system": SYSTEM, "cache": cache}


def test_seed_merges_and_export_brings_back_only_new_timings(tmp_path):
    seed_dir, folder, out = tmp_path / "seed", tmp_path / "cache", tmp_path / "out"
    seed_dir.mkdir()
    (seed_dir / "inductor_autotune-abc123.json").write_text(json.dumps(_file(
        {"mm": {"shape_a": {"highest": {"choice1": 0.1, "choice2": 0.2}}}})))
    (seed_dir / "inductor_autotune-broken.json").write_text("{not json")
    (seed_dir / "other.json").write_text("{}")
    folder.mkdir()
    # this machine already timed another product, and one of the seeded choices differently
    (folder / "abc123").write_text(json.dumps(_file(
        {"mm": {"shape_b": {"highest": {"choice1": 0.5}}, "shape_a": {"highest": {"choice1": 0.15}}}})))

    held = ac.seed(seed_dir, folder)
    assert held == {"abc123": 2}  # the broken file is passed over, the unrelated one not read
    merged = json.loads((folder / "abc123").read_text())
    assert merged["system"] == SYSTEM
    assert merged["cache"]["mm"]["shape_a"]["highest"] == {"choice1": 0.15, "choice2": 0.2}  # this machine's kept
    assert merged["cache"]["mm"]["shape_b"]["highest"] == {"choice1": 0.5}

    assert ac.export(folder, out, held) == {}  # nothing timed since the seed: nothing to bring back
    assert not out.exists() or not list(out.iterdir())

    merged["cache"]["addmm"] = {"shape_c": {"highest": {"choice3": 0.3}}}  # what a compile adds
    (folder / "abc123").write_text(json.dumps(merged))
    (folder / "abc123.tmp").write_text("partial")
    assert ac.export(folder, out, held) == {"abc123": 3}
    assert sorted(p.name for p in out.iterdir()) == ["inductor_autotune-abc123.json"]
    assert json.loads((out / "inductor_autotune-abc123.json").read_text()) == merged


def test_a_missing_seed_folder_or_cache_is_no_error(tmp_path):
    assert ac.seed(tmp_path / "none", tmp_path / "cache") == {}
    assert ac.export(tmp_path / "none", tmp_path / "out") == {}


class _Choice:
    def __init__(self, key):
        self.key = key

    def hash_key(self):
        return self.key


def test_torch_reads_seeded_timings_instead_of_timing_again(tmp_path, monkeypatch):
    """The file layout is torch's: PersistentCache.lookup returns the seeded timings and never calls benchmark."""
    pytest.importorskip("torch._inductor.codecache")
    import torch
    from torch._inductor import codecache

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    codecache.CacheBase.get_local_cache_path.cache_clear()
    try:
        folder = ac.local_cache_folder()
        assert folder == tmp_path / "inductor" / "cache"
        key = codecache.CacheBase.get_system()["hash"]
        precision = torch.get_float32_matmul_precision()
        seed_dir = tmp_path / "seed"
        seed_dir.mkdir()
        (seed_dir / f"{ac.PREFIX}{key}.json").write_text(json.dumps(
            {"system": codecache.CacheBase.get_system(),
             "cache": {"mm": {"inputs1": {precision: {"a": 0.25, "b": 0.5}}}}}))
        assert ac.seed(seed_dir, folder) == {key: 1}

        def benchmark(choices):
            raise AssertionError("timed again although the timings were seeded")

        a, b = _Choice("a"), _Choice("b")
        with monkeypatch.context() as m:
            m.setattr(codecache.config, "autotune_local_cache", True)
            got = codecache.PersistentCache().lookup([a, b], "mm", "inputs1", benchmark)
            assert got == {a: 0.25, b: 0.5}
            # a product it has not timed is timed, and the new timing lands in the file export brings back
            c = _Choice("c")
            got = codecache.PersistentCache().lookup([c], "mm", "inputs2", lambda cs: {c: 0.75})
        assert got == {c: 0.75}
        assert ac.export(folder, tmp_path / "out", {key: 1}) == {key: 2}
    finally:
        codecache.CacheBase.get_local_cache_path.cache_clear()


@pytest.mark.parametrize("shadow", [300, 100])
def test_compare_seeds_the_cache_and_brings_back_what_a_stopped_variant_timed(tmp_path, monkeypatch, capsys, shadow):
    """compare.main end to end with its subprocesses stubbed (no GPU here): the seed reaches the machine's cache
    before the variants run, a max_autotune variant gets the rest of the build's shadow as its timeout (and is
    skipped when less than LONG_VARIANT_MIN is left), and the products it timed before it was stopped come back in
    --out beside the seeded ones."""
    import compare
    import data_pipeline
    import torch
    import _cuda_ext

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(_cuda_ext, "unpacked", lambda p, d: p)
    monkeypatch.setattr(_cuda_ext, "package_version", lambda p: "0")
    monkeypatch.setattr(data_pipeline, "make_synthetic_jpegs", lambda root, n: None)

    class _Proc:
        pid = 0

    monkeypatch.setattr(compare.Run, "start", lambda self, what, cmd: _Proc())
    monkeypatch.setattr(compare.Run, "finish", lambda self, what, proc, timeout: 0)
    calls = []

    def call(self, what, cmd, timeout, extra_env=None):
        calls.append((what, timeout, dict(extra_env or {})))
        if what == "train_step pretrain_b autotune_gemm":  # inductor timed one product, then the timeout came
            cache = tmp_path / "inductor" / "cache" / "sys1"
            data = json.loads(cache.read_text())
            data["cache"]["mm"]["new_shape"] = {"highest": {"c": 0.3}}
            cache.write_text(json.dumps(data))
            return -9
        return 0

    monkeypatch.setattr(compare.Run, "call", call)
    arm = tmp_path / "ARM"
    (arm / "Finetuning").mkdir(parents=True)
    (arm / "models_pretrain.py").write_text("")
    (arm / "Finetuning" / "models_mamba.py").write_text("")
    for name in ("m.tar.gz", "c.tar.gz"):
        (tmp_path / name).write_text("")
    seed_dir = tmp_path / "seed"
    seed_dir.mkdir()
    (seed_dir / f"{ac.PREFIX}sys1.json").write_text(json.dumps(_file({"mm": {"old_shape": {"highest": {"a": 0.1}}}})))
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", [
        "compare.py", "--out", str(out), "--arm-src", str(arm), "--mamba-ssm-src", str(tmp_path / "m.tar.gz"),
        "--causal-conv1d-src", str(tmp_path / "c.tar.gz"), "--workdir", str(tmp_path / "work"), "--budget", "5000",
        "--shadow-until", str(shadow), "--variants", "default", "autotune_gemm", "--profile-steps", "0",
        "--workloads", "pretrain_b", "--cli-variants", "default", "--tests", "--numerics", "",
        "--autotune-seed", str(seed_dir)])
    compare.main()

    timeouts = {what: t for what, t, _ in calls}
    assert timeouts["train_step pretrain_b default"] == 240
    res = json.loads((out / "compare.json").read_text())
    assert res["autotune_seed"] == {"sys1": 1}
    if shadow < compare.LONG_VARIANT_MIN:
        assert "train_step pretrain_b autotune_gemm" not in timeouts
        assert "train_step pretrain_b autotune_gemm" in res["skipped"]
        assert not list(out.glob(ac.PREFIX + "*")) and res.get("autotune_out") is None  # nothing new to bring back
        return
    assert shadow - 10 < timeouts["train_step pretrain_b autotune_gemm"] <= shadow  # the rest of the shadow
    env = {what: e for what, _, e in calls}["train_step pretrain_b autotune_gemm"]
    assert json.loads(env["ARMVISION_INDUCTOR"]) == {"max_autotune_gemm": True}
    back = json.loads((out / f"{ac.PREFIX}sys1.json").read_text())
    assert set(back["cache"]["mm"]) == {"old_shape", "new_shape"}
    assert res["autotune_out"] == {"sys1": 2}
    assert "benchmarks/autotune/" in capsys.readouterr().out
