"""benchmarks/device_call.sh without a GPU: stand-ins for nvidia-smi and python3 record what compare.py would be
given, so the splitting of COMPARE_ARGS is checked (quotes honoured: ``--numerics ''`` is one empty argument; on
2026-12-07 an unquoted expansion passed the two quote characters and the numerics ran with ``-k "''"``)."""

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "device_call.sh"


@pytest.fixture
def stubs(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "args"
    # python3: the environment line gets a version, compare.py's call writes its arguments one per line (NUL-ended)
    (bin_dir / "python3").write_text(
        "#!/bin/bash\n"
        "if [ \"$1\" = -c ]; then echo 3.12 torch stub; exit 0; fi\n"
        f"for a in \"$@\"; do printf '%s\\0' \"$a\"; done > {record}\n"
        f"echo \"$TORCHINDUCTOR_CACHE_DIR\" > {record}.cache\n")
    (bin_dir / "nvidia-smi").write_text("#!/bin/bash\necho 'name, memory.total'\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    out = tmp_path / "out"
    out.mkdir()
    return bin_dir, record, out


def _run(stubs, compare_args):
    bin_dir, _, out = stubs
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "OUT": str(out)}
    if compare_args is not None:
        env["COMPARE_ARGS"] = compare_args
    return subprocess.run(["bash", str(SCRIPT), ".carry"], cwd=SCRIPT.parents[1], env=env, capture_output=True,
                          text=True)


def _given(stubs) -> list[str]:
    return stubs[1].read_bytes().decode().split("\0")[:-1]


@pytest.mark.parametrize("compare_args, tail", [
    ("--budget 575 --variants default bt4 --numerics ''", ["--budget", "575", "--variants", "default", "bt4",
                                                           "--numerics", ""]),
    ("--cli-variants --tests --numerics \"\"", ["--cli-variants", "--tests", "--numerics", ""]),
    ("--scan-variants 'bt4={\"BT\": 4}'", ["--scan-variants", 'bt4={"BT": 4}']),
    ("", []),
    (None, []),
])
def test_compare_args_are_split_as_a_command_line(stubs, compare_args, tail):
    proc = _run(stubs, compare_args)
    assert proc.returncode == 0, proc.stderr
    given = _given(stubs)
    assert given[0] == "benchmarks/compare.py" and given[1:3] == ["--out", str(stubs[2])]
    assert given[3:9] == ["--arm-src", ".carry/ARM", "--mamba-ssm-src", ".carry/mamba_ssm-2.3.2.post1.tar.gz",
                          "--causal-conv1d-src", ".carry/causal_conv1d-1.7.0.tar.gz"]
    assert given[9:] == tail
    assert (stubs[2] / "env.log").exists() and (stubs[2] / "compare.log").exists()


def test_unbalanced_quotes_are_one_line_and_run_nothing(stubs):
    proc = _run(stubs, "--numerics '")
    assert proc.returncode == 2
    assert len(proc.stderr.splitlines()) == 1 and "COMPARE_ARGS is not a valid shell word list" in proc.stderr
    assert not stubs[1].exists()


def test_inductors_cache_is_an_ignored_folder_of_the_repository(stubs, monkeypatch):
    """A second call on the warm machine finds the first call's compiled kernels and tunings there (ignored build
    outputs stay between calls); a cache folder the caller sets is kept."""
    root = SCRIPT.parents[1]
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    assert _run(stubs, "").returncode == 0
    assert Path(str(stubs[1]) + ".cache").read_text().strip() == str(root / ".inductor_cache")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/tmp/elsewhere")
    assert _run(stubs, "").returncode == 0
    assert Path(str(stubs[1]) + ".cache").read_text().strip() == "/tmp/elsewhere"
    ignored = subprocess.run(["git", "check-ignore", "-q", "--no-index", ".inductor_cache/x"], cwd=root)
    assert ignored.returncode == 0
