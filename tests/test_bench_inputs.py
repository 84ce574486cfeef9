"""benchmarks/_inputs.py: the batch of real images that train_step.py and reference.py take instead of random
numbers (--images DIR), and its one-line errors."""

import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from armvision.data.transforms import NORMALIZATION

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
import _inputs  # noqa: E402


def _folder(root: Path, n: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / "train" / f"class_{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(d / f"img_{i}.jpg", quality=90)
    return root / "train"


def test_a_batch_of_images_cropped_and_normalised_the_same_way_every_time(tmp_path):
    root = _folder(tmp_path)
    a = _inputs.image_batch(root, 5, 16)
    assert a.shape == (5, 3, 16, 16) and a.dtype == torch.float32
    assert torch.equal(a, _inputs.image_batch(root, 5, 16))  # the seed fixes the crops
    assert not torch.equal(a, _inputs.image_batch(root, 5, 16, seed=1))
    # three files for five images: repeated in order, each with a crop of its own
    assert not torch.equal(a[0], a[3])
    # normalised with ImageNet's statistics: uniform noise images come out near (0.5 - mean) / std per channel
    mean, std = NORMALIZATION["imagenet"]
    expect = (0.5 - torch.tensor(mean)) / torch.tensor(std)
    assert torch.allclose(a.mean((0, 2, 3)), expect, atol=0.25)
    # the caller's random states (torch's, and Python's that timm's crop draws from) are left as they were
    torch.manual_seed(123)
    random.seed(123)
    before = torch.rand(1), random.random()
    torch.manual_seed(123)
    random.seed(123)
    _inputs.image_batch(root, 2, 16)
    assert torch.equal(torch.rand(1), before[0]) and random.random() == before[1]


def test_a_missing_empty_or_broken_folder_is_one_clear_error(tmp_path):
    with pytest.raises(_inputs.InputsError, match="no such folder"):
        _inputs.image_batch(tmp_path / "nowhere", 2, 16)
    (tmp_path / "empty").mkdir()
    with pytest.raises(_inputs.InputsError, match="no .jpg"):
        _inputs.image_batch(tmp_path / "empty", 2, 16)
    root = _folder(tmp_path / "broken", 1)
    (root / "class_0" / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(_inputs.InputsError, match="cannot read .*bad.jpg"):
        _inputs.image_batch(root, 2, 16)


@pytest.mark.parametrize("script", ["train_step.py", "reference.py"])
def test_the_scripts_refuse_a_bad_images_folder_in_one_line(tmp_path, script):
    args = [] if script == "train_step.py" else ["--arm-src", str(tmp_path), "--mamba-ssm-src", str(tmp_path),
                                                 "--causal-conv1d-src", str(tmp_path)]
    proc = subprocess.run([sys.executable, str(BENCH / script), *args, "--images", str(tmp_path / "nowhere")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--images" in proc.stderr and "no such folder" in proc.stderr


def test_the_reference_step_takes_the_image_batch(tmp_path):
    """reference.time_steps with images_dir trains on the batch of _inputs.image_batch (the CPU path of the tests)."""
    import reference

    root = _folder(tmp_path)
    seen = []

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3 * 16 * 16, 1000)

        def forward(self, x):
            seen.append(x.detach().clone())
            return self.fc(x.flatten(1))

    r = reference.time_steps(Tiny(), "finetune", 2, 16, steps=1, warmup=0, device="cpu", images_dir=root)
    assert r["ms"] > 0 and torch.equal(seen[0], _inputs.image_batch(root, 2, 16))
