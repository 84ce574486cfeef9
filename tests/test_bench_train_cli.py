"""benchmarks/train_cli.py: the steady-rate arithmetic, and its --tiny mode end to end on the CPU."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
import train_cli  # noqa: E402


def test_steady_rate_skips_the_first_window():
    windows = [{"images_per_s": r} for r in (100.0, 2000.0, 1800.0, 2200.0, 900.0)]
    s = train_cli.steady_rate(windows)
    assert s["images_per_s"] == 1900.0 and s["min_window_images_per_s"] == 900.0 and s["windows"] == 4
    assert s["min_over_steady"] == pytest.approx(900 / 1900)


def test_windows_give_the_step_split(tmp_path):
    """metrics_train.csv's loader wait and GPU span per window: medians after the first window, and the GPU idle
    between steps as each window's wall time per step minus its span."""
    path = tmp_path / "metrics_train.csv"
    path.write_text("kind,step,images_per_s,data_wait_ms,gpu_ms\n"
                    "train,8,100.0,900.0,500.0\ntrain,16,4000.0,0.5,60.0\ntrain,24,3200.0,1.5,62.0\n"
                    "train,32,3900.0,0.3,61.0\n")
    windows = train_cli.read_windows(path)
    s = train_cli.steady_rate(windows)
    assert s["gpu_ms"] == 61.0 and s["data_wait_ms"] == 0.5 and s["gpu_ms_windows"] == [60.0, 62.0, 61.0]
    split = train_cli.step_split(windows, 256)
    walls = [256 / r * 1e3 for r in (4000.0, 3200.0, 3900.0)]  # 64.0, 80.0, 65.6 ms
    assert split["wall_ms"] == pytest.approx(walls[2])
    assert split["idle_ms"] == pytest.approx(sorted([walls[0] - 60, walls[1] - 62, walls[2] - 61])[1])
    # a CPU run's log (gpu_ms empty) has no idle figure
    path.write_text("kind,step,images_per_s,data_wait_ms,gpu_ms\ntrain,8,100.0,1.0,\ntrain,16,200.0,1.0,\n")
    windows = train_cli.read_windows(path)
    assert "gpu_ms" not in train_cli.steady_rate(windows) and "idle_ms" not in train_cli.step_split(windows, 4)


@pytest.mark.slow
def test_tiny_mode_end_to_end(tmp_path):
    out = tmp_path / "res.json"
    proc = subprocess.run([sys.executable, str(BENCH / "train_cli.py"), "--tiny", "--workdir", str(tmp_path),
                           "--out", str(out), "--profile"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["tiny"] and res["images"] == 16 and len(list((tmp_path / "jpegs_tiny" / "train").rglob("*.jpg"))) == 16
    assert [r["workload"] for r in res["cli"]] == ["pretrain_b", "finetune_b"]
    for r in res["cli"]:
        assert r["exit_code"] == 0 and r["images_per_s"] > 0 and r["windows"] == 1, r
        assert "--max_steps 4" in r["command"] and "--optim.micro_batch 4" in r["command"]
    assert [p["mode"] for p in res["pipeline"]] == ["pretrain", "pretrain_pillow", "pretrain_float", "finetune",
                                                   "finetune_pillow"]
    assert all(p["images_per_s"] > 0 for p in res["pipeline"])
    assert "| pretrain_b |" in proc.stdout and "on cpu:" in proc.stdout  # no reference figure from another run
    for r in res["cli"]:  # the step split from the trainer's log: wall and loader wait; no GPU span on the CPU
        assert r["wall_ms"] > 0 and r["data_wait_ms"] >= 0 and "gpu_ms" not in r
        assert f"| {r['wall_ms']:.1f} / - / {r['data_wait_ms']:.1f} |" in proc.stdout
    prof = res["profile"]  # --profile: the pretraining trainer's top operators (kernels on a GPU) per step
    assert prof["active"] == 2 and prof["step_ms"] > 0 and not prof["compiled"] and len(prof["top"]) >= 5
    assert all(0 < r["share"] for r in prof["top"]) and "ms per step" in proc.stdout
    assert prof["most_launched"] and "| most launched | calls per step |" in proc.stdout
    # --skip cli: the profile alone (a GPU call with little time left spends it on the profile, not on a timed run)
    out2 = tmp_path / "res2.json"
    proc = subprocess.run([sys.executable, str(BENCH / "train_cli.py"), "--tiny", "--workdir", str(tmp_path),
                           "--out", str(out2), "--profile", "--skip", "pipeline", "cli", "--workloads", "pretrain_b"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res2 = json.loads(out2.read_text())
    assert res2["cli"] == [] and res2["pipeline"] == [] and res2["profile"]["workload"] == "pretrain_b"
    assert res2["profile"]["step_ms"] > 0 and "armvision pretrain_b:" not in proc.stdout
