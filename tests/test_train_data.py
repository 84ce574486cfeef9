"""Data: Fashion-MNIST idx files, ImageFolder/tar trees through timm's readers, webdataset shards,
transforms and samplers."""

import io
import json
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from trainhelpers import CLASSES, FMNIST_ROOT, HAS_FMNIST, make_fake_fmnist, make_image, make_imagefolder, write_idx

from armvision.data import (
    FashionMNIST,
    ResumableSampler,
    ShardSampler,
    build_dataset,
    collate,
    eval_transform,
    finetune_transform,
    normalization,
    pretrain_transform,
    read_idx,
)
from armvision.errors import ConfigError, DataError
from armvision.train import load_config


def test_idx_reader_reads_what_was_written(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28)).astype(np.uint8)
    for name in ("x-images-idx3-ubyte.gz", "x-images-idx3-ubyte"):
        write_idx(tmp_path / name, images)
        assert np.array_equal(read_idx(tmp_path / name), images)
    (tmp_path / "bad").write_bytes(b"\x00\x00\x08\x01" + (7).to_bytes(4, "big") + b"\x01\x02")
    with pytest.raises(DataError, match=r"truncated or corrupt: header says \[7\] \(7 bytes\), file holds 2"):
        read_idx(tmp_path / "bad")
    (tmp_path / "junk").write_bytes(b"hello world")
    with pytest.raises(DataError, match="is not an idx file"):
        read_idx(tmp_path / "junk")


def test_fashion_mnist_from_a_folder_the_user_gives(tmp_path):
    root = make_fake_fmnist(tmp_path / "fm", n_train=12, n_test=6)
    ds = FashionMNIST(root, "train")
    img, label = ds[3]
    assert len(ds) == 12 and img.mode == "L" and img.size == (28, 28) and label == 3
    assert FashionMNIST(root, "test", mode="RGB")[0][0].mode == "RGB"
    with pytest.raises(DataError, match="Fashion-MNIST has no split 'val'; its splits are 'train' and 'test'"):
        FashionMNIST(root, "val")
    with pytest.raises(DataError, match=r"Fashion-MNIST folder .*nowhere does not exist.*apt-get install "
                                        r"dataset-fashion-mnist"):
        FashionMNIST(tmp_path / "nowhere")
    (root / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz not found in"):
        FashionMNIST(root, "test")


@pytest.mark.skipif(not HAS_FMNIST, reason="Debian's dataset-fashion-mnist is not installed")
def test_debian_fashion_mnist_in_place():
    train, test = FashionMNIST(split="train"), FashionMNIST(FMNIST_ROOT, split="test")
    assert (len(train), len(test)) == (60000, 10000)
    assert np.bincount(train.targets).tolist() == [6000] * 10
    # the normalisation preset is the training split's statistics
    x = train.images.astype(np.float64) / 255
    mean, std = normalization("fashion_mnist", 1)
    assert abs(x.mean() - mean[0]) < 1e-4 and abs(x.std() - std[0]) < 1e-4


def test_imagefolder_classes_subset_and_val_class_map(tmp_path):
    root = make_imagefolder(tmp_path / "d")
    tf = eval_transform(16, *normalization("imagenet", 3))
    train = build_dataset("imagefolder", str(root), "train", tf)
    assert len(train) == 24 and train.classes == list(CLASSES)
    img, label, skipped = train[0]
    assert img.shape == (3, 16, 16) and label == 0 and skipped == ()
    # val with a missing class still maps names to the training indices
    for p in (root / "val" / "circle").iterdir():
        p.unlink()
    (root / "val" / "circle").rmdir()
    val = build_dataset("imagefolder", str(root), "val", tf, class_map={c: i for i, c in enumerate(CLASSES)})
    assert sorted({val[i][1] for i in range(len(val))}) == [1, 2]
    sub = build_dataset("imagefolder", str(root), "train", tf, subset=5, subset_seed=1)
    again = build_dataset("imagefolder", str(root), "train", tf, subset=5, subset_seed=1)
    assert len(sub) == 5 and sub.indices == again.indices
    with pytest.raises(DataError, match=r"asked for a subset of 99 images, but imagefolder split 'train' holds 24"):
        build_dataset("imagefolder", str(root), "train", tf, subset=99)
    gray = build_dataset("imagefolder", str(root), "train", eval_transform(16, *normalization("imagenet", 1)),
                         in_chans=1)
    assert gray[0][0].shape == (1, 16, 16)


def test_unreadable_images_are_skipped_and_counted_or_fatal(tmp_path, caplog):
    root = make_imagefolder(tmp_path / "d", per_class={"train": 2}, corrupt=2)
    ds = build_dataset("imagefolder", str(root), "train", eval_transform(16, *normalization("imagenet", 3)))
    names = [ds.reader.filename(i) for i in range(len(ds))]
    first_bad = names.index(next(n for n in names if "broken_0" in str(n)))
    with caplog.at_level(logging.WARNING):
        img, label, skipped = ds[first_bad]
    # circle/broken_0.png and circle/broken_1.png are passed over; the next readable image is square/000.png
    assert [Path(n).name for n in skipped] == ["broken_0.png", "broken_1.png"] and label == 1
    assert "skipped unreadable image" in caplog.text and "broken_0.png" in caplog.text
    loader = torch.utils.data.DataLoader(ds, batch_size=len(ds), collate_fn=collate)
    _, _, skips = next(iter(loader))
    assert skips.events == 3  # broken_0 + broken_1 (twice: passed over for broken_0's sample and at its own index)
    assert sorted(Path(n).name for n in skips.files) == ["broken_0.png", "broken_1.png", "broken_1.png"]
    # the two samples at the broken files' indices are stand-ins (square/000.png's image), no other
    assert skips.standin.nonzero().flatten().tolist() == [first_bad, first_bad + 1]
    strict = build_dataset("imagefolder", str(root), "train", None, strict_images=True)
    with pytest.raises(DataError, match=r"cannot read image .*broken_0.png: .*set data.strict_images false"):
        strict[first_bad]


def test_missing_and_empty_datasets_name_the_path_and_layout(tmp_path):
    with pytest.raises(DataError, match=rf"dataset root {tmp_path}/nope does not exist; expected "
                                        rf"{tmp_path}/nope/train/<class>/<image>"):
        build_dataset("imagefolder", str(tmp_path / "nope"), "train")
    (tmp_path / "empty" / "train" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match=rf"no images found in {tmp_path}/empty/train"):
        build_dataset("imagefolder", str(tmp_path / "empty"), "train")
    with pytest.raises(DataError, match=r"has no 'val' split; expected .*found: train"):
        build_dataset("imagefolder", str(tmp_path / "empty"), "val")
    with pytest.raises(DataError, match=r"data.root is not set: pass --data.root PATH"):
        build_dataset("imagefolder", None, "train")
    with pytest.raises(DataError, match=r"unknown dataset kind 'cifar'"):
        build_dataset("cifar", str(tmp_path), "train")


def test_tar_shards_one_per_class(tmp_path):
    src = make_imagefolder(tmp_path / "src", per_class={"train": 3})
    shards = tmp_path / "d" / "train"
    shards.mkdir(parents=True)
    for name in CLASSES:
        with tarfile.open(shards / f"{name}.tar", "w") as tar:
            for p in sorted((src / "train" / name).iterdir()):
                tar.add(p, arcname=f"{name}/{p.name}")
    ds = build_dataset("imagefolder", str(tmp_path / "d"), "train", None)
    assert len(ds) == 9 and ds.classes == list(CLASSES)
    assert sorted(ds[i][1] for i in range(9)) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert ds[0][0].size == (20, 20)


def test_webdataset_shards_through_timm(tmp_path):
    pytest.importorskip("webdataset")
    root = tmp_path / "wds"
    root.mkdir()
    rng = np.random.default_rng(0)
    files, lengths = [], []
    for s in range(2):
        name = f"train-{s:04d}.tar"
        with tarfile.open(root / name, "w") as tar:
            for i in range(6):
                buf = io.BytesIO()
                make_image(i % 3, rng).save(buf, format="PNG")
                for ext, data in (("png", buf.getvalue()), ("cls", str(i % 3).encode())):
                    info = tarfile.TarInfo(f"s{s}_{i:03d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        files.append(name)
        lengths.append(6)
    (root / "_info.json").write_text(json.dumps({"name": "tiny", "splits": {"train": {
        "name": "train", "num_samples": 12, "filenames": files, "shard_lengths": lengths}}}))
    tf = eval_transform(16, *normalization("imagenet", 3))
    ds = build_dataset("wds/tiny", str(root), "train", tf, is_training=False, batch_size=4)
    samples = list(ds)
    assert len(samples) == 12
    assert all(img.shape == (3, 16, 16) for img, _ in samples)
    assert sorted(int(t) for _, t in samples) == [0] * 4 + [1] * 4 + [2] * 4
    with pytest.raises(DataError, match="need a map-style dataset"):
        build_dataset("wds/tiny", str(root), "train", tf, subset=3)


def test_transforms_of_the_three_stages():
    img = make_image(0, np.random.default_rng(0), size=28).convert("L")
    mean, std = normalization("fashion_mnist", 1)
    assert normalization("imagenet", 1) == ((pytest.approx(0.449),), (pytest.approx(0.226),))
    assert normalization("fashion_mnist", 3)[0] == (0.2860,) * 3
    pre = pretrain_transform(28, mean, std)
    rrc = pre.transforms[0]
    assert rrc.scale == (0.2, 1.0) and "bicubic" in str(rrc)
    ft = finetune_transform(28, mean, std, auto_augment="rand-m9-mstd0.5-inc1", reprob=0.25)
    torch.manual_seed(0)
    for _ in range(300):  # magnitude noise reaches 10, where posterize keeps 0 bits: must not fail
        x = ft(img)
    assert x.shape == (1, 28, 28)
    ev = eval_transform(224, *normalization("imagenet", 3))
    sizes = [t.size for t in ev.transforms if hasattr(t, "size")]
    assert sizes[:2] == [(256, 256), (224, 224)]  # squash to 224 / 0.875, then centre crop
    big = Image.new("RGB", (300, 200))
    assert ev(big).shape == (3, 224, 224)


def test_eval_resize_squash_or_shorter_side():
    # 400x200, the left quarter white: squashing keeps it in the crop; resizing the shorter side to 256
    # (512x256) and cropping the centre 224 leaves it out
    img = Image.new("RGB", (400, 200))
    img.paste((255, 255, 255), (0, 0, 100, 200))
    plain = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    squash = eval_transform(224, *plain, resize="squash")(img)
    shorter = eval_transform(224, *plain, resize="shorter")(img)
    assert squash.shape == shorter.shape == (3, 224, 224)
    assert squash[:, :, :40].mean() > 0.99 and squash[:, :, 60:].max() < 0.01  # 64 white columns - 16 cropped
    assert shorter.max() < 0.01
    square = Image.new("RGB", (300, 300), (200, 10, 10))  # same result on a square image
    assert torch.allclose(eval_transform(224, *plain, resize="squash")(square),
                          eval_transform(224, *plain, resize="shorter")(square))
    with pytest.raises(ValueError, match="eval resize 'crop': expected one of squash, shorter"):
        eval_transform(224, *plain, resize="crop")
    with pytest.raises(ConfigError, match="data.eval_resize"):
        load_config("fmnist_finetune", {"data.eval_resize": "crop"})


def test_resumable_sampler_continues_the_same_order():
    ds = list(range(20))
    full = ResumableSampler(ds, num_replicas=2, rank=1, seed=3)
    full.set_epoch(4)
    order = list(full)
    part = ResumableSampler(ds, num_replicas=2, rank=1, seed=3)
    part.set_epoch(4, start=4)
    assert list(part) == order[4:] and len(part) == len(order) - 4 == 6
    other = ResumableSampler(ds, num_replicas=2, rank=0, seed=3)
    other.set_epoch(4)
    assert sorted(order + list(other)) == list(range(20))
    spanning = ResumableSampler(ds, num_replicas=2, rank=1, seed=3)
    spanning.set_epoch(4, start=2, until=7, per_epoch=8)  # epochs 4, 5, 6 in one pass, 8 of 10 indices each
    per_epoch = []
    for e in (4, 5, 6):
        part.set_epoch(e)
        per_epoch += list(part)[2 if e == 4 else 0:8]
    assert list(spanning) == per_epoch and len(spanning) == 6 + 8 + 8
    shards = [list(ShardSampler(list(range(7)), 3, r)) for r in range(3)]
    assert shards == [[0, 3, 6], [1, 4], [2, 5]]
