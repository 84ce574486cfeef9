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
        # config.patch, not monkeypatch: pytest's undo of a setattr on torch's config module deletes the option, and
        # every later inductor compile in the process then failed ("autotune_local_cache does not exist")
        with codecache.config.patch(autotune_local_cache=True):
            got = codecache.PersistentCache().lookup([a, b], "mm", "inputs1", benchmark)
            assert got == {a: 0.25, b: 0.5}
            # a product it has not timed is timed, and the new timing lands in the file export brings back
            c = _Choice("c")
            got = codecache.PersistentCache().lookup([c], "mm", "inputs2", lambda cs: {c: 0.75})
        assert got == {c: 0.75}
        assert ac.export(folder, tmp_path / "out", {key: 1}) == {key: 2}
    finally:
        codecache.CacheBase.get_local_cache_path.cache_clear()


@pytest.mark.parametrize("shadow", [300, 110])  # 110: room for default (ESTIMATE 100) but not a long variant (120)
def test_compare_seeds_the_cache_and_brings_back_what_a_stopped_variant_timed(tmp_path, monkeypatch, capsys, shadow):
    """compare.main end to end with its subprocesses stubbed (no GPU here): the seed reaches the machine's cache
    before the variants run, a max_autotune variant gets the rest of the build's shadow as its timeout (and is
    skipped when less than LONG_VARIANT_MIN is left), and the products it timed before it was stopped come back in
    --out beside the seeded ones."""
    import compare
    import data_pipeline

    if shadow < 200:  # the short shadow must fit the default variant and not a long one (compare's estimates)
        assert compare.ESTIMATE["train_step"] < shadow - 5 and shadow < compare.LONG_VARIANT_MIN
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

    cmds = {}

    def call(self, what, cmd, timeout, extra_env=None):
        calls.append((what, timeout, dict(extra_env or {})))
        cmds[what] = cmd
        if what == "train_step pretrain_b cdt":  # inductor tuned one more kernel, then the timeout came
            f = tmp_path / "inductor" / "cd" / "kernel2.best_config"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(json.dumps({"XBLOCK": 64, "num_warps": 2, "num_stages": 1, "found_by_coordesc": True}))
            return -9
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
    (seed_dir / ac.COORDESC).write_text(json.dumps({"ab/kernel1.best_config": {"XBLOCK": 32, "found_by_coordesc": True}}))
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", [
        "compare.py", "--out", str(out), "--arm-src", str(arm), "--mamba-ssm-src", str(tmp_path / "m.tar.gz"),
        "--causal-conv1d-src", str(tmp_path / "c.tar.gz"), "--workdir", str(tmp_path / "work"), "--budget", "5000",
        "--shadow-until", str(shadow), "--variants", "default", "autotune_gemm", "cdt", "--profile-steps", "0",
        "--workloads", "pretrain_b", "--cli-variants", *(["default"] if shadow > 200 else []), "--tests",
        "--numerics", "", "--workers", "15",
        "--cli-workers-also", "11", "15",
        "--autotune-seed", str(seed_dir)])
    compare.main()

    timeouts = {what: t for what, t, _ in calls}
    assert timeouts["train_step pretrain_b default"] == 240
    # the command with the main loader (also when --cli-variants names none: the other loader needs this call's
    # baseline), then again with 11 workers (15 is the main one: not run twice)
    commands = [what for what, _, _ in calls if what.startswith("armvision")]
    assert commands == ["armvision pretrain_b", "armvision pretrain_b:workers11"]
    for what, n in zip(commands, ("15", "11")):
        assert cmds[what][cmds[what].index("--workers") + 1] == n
    res = json.loads((out / "compare.json").read_text())
    assert res["autotune_seed"] == {"sys1": 1}
    assert res["coordesc_seed"] == 1 and (tmp_path / "inductor" / "ab" / "kernel1.best_config").is_file()
    if shadow < compare.LONG_VARIANT_MIN:
        for v in ("autotune_gemm", "cdt"):
            assert f"train_step pretrain_b {v}" not in timeouts
            assert f"train_step pretrain_b {v}" in res["skipped"]
        assert not list(out.glob(ac.PREFIX + "*")) and res.get("autotune_out") is None  # nothing new to bring back
        assert not (out / ac.COORDESC).exists() and not res.get("coordesc_out")
        return
    assert shadow - 10 < timeouts["train_step pretrain_b autotune_gemm"] <= shadow  # the rest of the shadow
    env = {what: e for what, _, e in calls}["train_step pretrain_b autotune_gemm"]
    assert json.loads(env["ARMVISION_INDUCTOR"]) == {"max_autotune_gemm": True}
    back = json.loads((out / f"{ac.PREFIX}sys1.json").read_text())
    assert set(back["cache"]["mm"]) == {"old_shape", "new_shape"}
    assert res["autotune_out"] == {"sys1": 2}
    # cdt ran with the rest of the shadow too, and the kernel it tuned before it was stopped came back
    assert 0 < timeouts["train_step pretrain_b cdt"] <= shadow
    assert json.loads({what: e for what, _, e in calls}["train_step pretrain_b cdt"]["ARMVISION_INDUCTOR"]) == {
        "coordinate_descent_tuning": True}
    assert set(json.loads((out / ac.COORDESC).read_text())) == {"ab/kernel1.best_config", "cd/kernel2.best_config"}
    assert res["coordesc_out"] == 2
    printed = capsys.readouterr().out
    assert "benchmarks/autotune/" in printed and ac.COORDESC in printed


def test_coordesc_configs_round_trip_and_bad_entries_are_passed_over(tmp_path, capsys):
    root, out, fresh = tmp_path / "inductor", tmp_path / "out", tmp_path / "fresh"
    (root / "ab").mkdir(parents=True)
    (root / "ab" / "k1.best_config").write_text(json.dumps({"XBLOCK": 128, "found_by_coordesc": True}))
    (root / "ab" / "k2.best_config").write_text(json.dumps({"XBLOCK": 64, "found_by_coordesc": False}))  # heuristic
    (root / "ab" / "k3.best_config").write_text("{damaged")
    assert ac.export_coordesc(root, out) == 1
    assert ac.export_coordesc(root, tmp_path / "out2", known=1) == 0  # nothing new since the seed
    assert not (tmp_path / "out2").exists()
    data = json.loads((out / ac.COORDESC).read_text())
    assert data == {"ab/k1.best_config": {"XBLOCK": 128, "found_by_coordesc": True}}

    data["../escape.best_config"] = {"XBLOCK": 1}  # never written outside the cache dir
    data["ab/not_a_dict.best_config"] = [1]
    (out / ac.COORDESC).write_text(json.dumps(data))
    (fresh / "ab").mkdir(parents=True)
    (fresh / "ab" / "k1.best_config").write_text(json.dumps({"XBLOCK": 256, "found_by_coordesc": True}))
    assert ac.seed_coordesc(out, fresh) == 1
    assert json.loads((fresh / "ab" / "k1.best_config").read_text())["XBLOCK"] == 256  # this machine's own kept
    assert not (tmp_path / "escape.best_config").exists()
    assert "passed over" in capsys.readouterr().out

    (out / ac.COORDESC).write_text("[1, 2]")
    assert ac.seed_coordesc(out, tmp_path / "other") == 0
    assert "not a file of coordinate-descent configs" in capsys.readouterr().out
    assert ac.seed_coordesc(tmp_path / "none", fresh) == 0


def test_torch_reads_a_seeded_coordesc_config_instead_of_tuning_again(tmp_path):
    """The layout is torch's own: a config AutotuneCache saved on one machine (cache dir) and carried through
    export/seed into another machine's cache dir is what AutotuneCache.read_best returns there."""
    pytest.importorskip("torch._inductor.runtime.autotune_cache")
    from torch._inductor.runtime.autotune_cache import AutotuneCache
    from torch._inductor.runtime.triton_compat import Config

    meta = {"coordinate_descent_tuning": True, "autotune_local_cache": True}
    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "out"
    kernel = "cq/cqx7kernelsourcehash.py"  # inductor's layout: <cache dir>/<2 chars>/<source hash>.py
    (a / "cq").mkdir(parents=True)
    cache = AutotuneCache.create(meta, str(a / kernel), "configs-hash-1")
    assert cache is not None
    cache.save(Config({"XBLOCK": 256, "R0_BLOCK": 8}, num_warps=8, num_stages=1), 5_000_000, found_by_coordesc=True)
    assert ac.export_coordesc(a, out) == 1

    assert ac.seed_coordesc(out, b) == 1
    heuristic = [Config({"XBLOCK": 64, "R0_BLOCK": 64}, num_warps=4, num_stages=1)]
    best = AutotuneCache.create(meta, str(b / kernel), "configs-hash-1").read_best(meta, heuristic)
    assert best is not None and best.kwargs == {"XBLOCK": 256, "R0_BLOCK": 8} and best.num_warps == 8
    # other candidate configs (another kernel version) hash otherwise: not read
    assert AutotuneCache.create(meta, str(b / kernel), "configs-hash-2").read_best(meta, heuristic) is None
