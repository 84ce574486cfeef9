"""benchmarks/prepare_carry.sh without the network: the sdists are already in the folder, so only the official
code's copy, the git exclude and the refusals are exercised."""

import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "prepare_carry.sh"


def _run(cwd, *args):
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], cwd=cwd, capture_output=True, text=True)


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    carry = root / ".carry"
    carry.mkdir()
    for name in ("mamba_ssm-2.3.2.post1.tar.gz", "causal_conv1d-1.7.0.tar.gz"):
        (carry / name).write_bytes(b"sdist")  # present: nothing to download
    return root


def _arm(path: Path, git: bool = True) -> Path:
    (path / "Finetuning").mkdir(parents=True)
    (path / "models_pretrain.py").write_text("# pretrain\n")
    (path / "Finetuning" / "models_mamba.py").write_text("# finetune\n")
    if git:
        subprocess.run(["git", "init", "-q", str(path)], check=True)
    return path


def test_copies_the_checkout_without_history_and_excludes_the_folder(repo, tmp_path):
    arm = _arm(tmp_path / "ARM")
    proc = _run(repo, arm)
    assert proc.returncode == 0, proc.stderr
    assert (repo / ".carry" / "ARM" / "models_pretrain.py").read_text() == "# pretrain\n"
    assert not (repo / ".carry" / "ARM" / ".git").exists()
    assert "device_call.sh .carry" in proc.stdout
    assert _run(repo, arm).returncode == 0  # again: the exclude line is not repeated
    assert (repo / ".git" / "info" / "exclude").read_text().splitlines().count(".carry/") == 1
    status = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True).stdout
    assert ".carry" not in status


def test_a_bare_mirror_gives_its_newest_commit(repo, tmp_path):
    work = _arm(tmp_path / "work")
    env = ["-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", *env, "-C", str(work), "add", "-A"], check=True)
    subprocess.run(["git", *env, "-C", str(work), "commit", "-qm", "x"], check=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(tmp_path / "mirror")], check=True)
    proc = _run(repo, tmp_path / "mirror")
    assert proc.returncode == 0, proc.stderr
    assert (repo / ".carry" / "ARM" / "Finetuning" / "models_mamba.py").exists()


def test_wrong_input_is_one_line_and_keeps_an_earlier_copy(repo, tmp_path):
    assert _run(repo, _arm(tmp_path / "ARM")).returncode == 0
    (tmp_path / "other").mkdir()
    half = tmp_path / "half"
    half.mkdir()
    (half / "models_pretrain.py").write_text("")  # no Finetuning/models_mamba.py
    for args, message in [((), "usage"), ((tmp_path / "missing",), "no such folder"),
                          ((tmp_path / "other",), "has no models_pretrain.py"),
                          ((half,), "has no Finetuning/models_mamba.py")]:
        proc = _run(repo, *args)
        assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert (repo / ".carry" / "ARM" / "models_pretrain.py").exists()  # the good copy is still there
    assert not (repo / ".carry" / ".ARM.tmp").exists()
    proc = _run(tmp_path, tmp_path / "ARM")  # not a repository root
    assert proc.returncode == 2 and "repository root" in proc.stderr
