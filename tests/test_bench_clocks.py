"""benchmarks/_clocks.py: nvidia-smi's samples reduced to a step's clocks, power and slowdown reasons, and
compare.py's runner sampling beside each step (a stand-in nvidia-smi on PATH)."""

import os
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
import _clocks  # noqa: E402
import compare  # noqa: E402

LINES = ["1980, 650.5, 61, 100, 0x0000000000000000", "1755, 700.0, 66, 98, 0x0000000000000004",
         "1980, 690.0, 64, 100, 0x0000000000000000", "345, 80.0, 40, 0, 0x0000000000000001",
         # compiling: the clocks up, the GPU nearly unused (not a busy sample), a slowdown reason that must not count
         "1980, 120.0, 45, 3, 0x0000000000000008", "1980, 118.0, 45, [N/A], 0x0", "garbage", ""]


def test_summary_counts_only_busy_samples_and_names_the_slowdowns():
    s = _clocks.summarize(LINES)
    assert s["samples"] == 5 and s["busy_samples"] == 3
    assert s["sm_mhz_median"] == 1980 and s["sm_mhz_min"] == 1755
    assert s["power_w_median"] == 690.0 and s["power_w_max"] == 700.0 and s["temp_c_max"] == 66
    assert s["reasons"] == ["software power cap"] and abs(s["power_limited_share"] - 1 / 3) < 1e-9
    assert s["trace"][1] == [1755.0, 700.0, 98.0, 4] and len(s["trace"]) == 5  # every parsed sample, idle ones too
    # no busy sample: the figures are over all of them; nothing parsable: no figures
    idle = _clocks.summarize([LINES[3]])
    assert idle["busy_samples"] == 0 and idle["sm_mhz_median"] == 345 and idle["reasons"] == []
    assert _clocks.summarize(["NVIDIA-SMI has failed"]) == {"samples": 0}
    table = "\n".join(_clocks.table_lines({"ref_pretrain": s, "scan": {"samples": 0}}))
    assert "| ref_pretrain | 3 of 5 | 1980 (1755) | 33 % | 690 (700) | 66 | software power cap |" in table
    assert "scan" not in table
    # a summary of the first version (run T's compare.json: no power-limited share) still makes a row
    old = {k: v for k, v in s.items() if k not in ("power_limited_share", "trace")}
    row = "| ref_pretrain | 3 of 5 | 1980 (1755) |  | 690 (700) |"
    assert row in "\n".join(_clocks.table_lines({"ref_pretrain": old}))


def test_runner_samples_the_clocks_beside_each_step(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "nvidia-smi"  # prints samples until stopped, as nvidia-smi -lms does
    stub.write_text("#!/bin/sh\nwhile true; do echo '1900, 600.0, 60, 97, 0x0000000000000008'; sleep 0.05; done\n")
    stub.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    run = compare.Run(tmp_path / "out", budget=100, work=tmp_path / "work")
    assert run.call("step one", [sys.executable, "-c", "import time; time.sleep(0.6)"], timeout=30) == 0
    c = run.res["clocks"]["step one"]
    assert c["samples"] >= 3 and c["sm_mhz_median"] == 1900 and c["reasons"] == ["hardware slowdown"]
    assert "| 1900 (1900) | 0 % | 600 (600) | 60 | hardware slowdown |" in compare.table(run.res)
    # without nvidia-smi the runner records no clocks
    monkeypatch.setenv("PATH", os.defpath.replace(str(bin_dir), ""))
    monkeypatch.setattr(_clocks.shutil, "which", lambda name: None)
    run2 = compare.Run(tmp_path / "out2", budget=100, work=tmp_path / "work2")
    assert run2.call("step two", [sys.executable, "-c", "pass"], timeout=30) == 0 and "clocks" not in run2.res
