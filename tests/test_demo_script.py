"""scripts/demo.sh, the README's one-command set-up of the demo: its options and its data messages.

Only the paths that stop before installing or training are run here (the demo itself is
tests/test_train_e2e.py's smoke test)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "demo.sh"
BASH = shutil.which("bash")

pytestmark = pytest.mark.skipif(BASH is None, reason="needs bash")


def run(args, env=None, path=None):
    e = dict(os.environ, **(env or {}))
    if path is not None:
        e["PATH"] = path
    return subprocess.run([BASH, str(SCRIPT), *args], capture_output=True, text=True, env=e, timeout=60)


def test_help_names_its_options_and_exits_0():
    r = run(["--help"])
    assert r.returncode == 0
    assert r.stdout.startswith("usage: scripts/demo.sh [--data-root DIR] [--no-install]")
    assert "--profile smoke" in r.stdout


def test_data_root_without_a_folder_is_an_error():
    r = run(["--data-root"])
    assert r.returncode == 2
    assert r.stderr.strip() == "scripts/demo.sh: error: --data-root needs a folder"


@pytest.mark.parametrize("form", ["separate", "equals"])
def test_a_data_root_without_the_idx_files_says_which_files_and_how_to_get_them(tmp_path, form):
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"")  # one of four is not enough
    args = ["--data-root", str(tmp_path)] if form == "separate" else [f"--data-root={tmp_path}"]
    r = run([*args, "--no-install", "--profile", "smoke"])
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert lines[0] == f"scripts/demo.sh: error: no Fashion-MNIST idx files in {tmp_path}"
    assert "t10k-labels-idx1-ubyte.gz" in lines[1]
    assert lines[-1].strip() == "into a folder DIR and run: scripts/demo.sh --data-root DIR"
    assert r.stdout == ""


def test_without_apt_get_it_says_how_to_get_the_files_instead_of_installing(tmp_path):
    bin_dir = tmp_path / "bin"  # a PATH with `id` but no apt-get, sudo or python
    bin_dir.mkdir()
    (bin_dir / "id").symlink_to(shutil.which("id"))
    r = run(["--profile", "smoke"], env={"ARMVISION_FMNIST_DEFAULT": str(tmp_path / "none")}, path=str(bin_dir))
    assert r.returncode == 2
    assert r.stderr.splitlines()[0] == (f"scripts/demo.sh: error: Fashion-MNIST is not in {tmp_path / 'none'} "
                                        "and apt-get is not available here to install it.")
    assert "--data-root DIR" in r.stderr
