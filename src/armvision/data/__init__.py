"""Data: datasets (ImageFolder/tar via timm readers, Fashion-MNIST idx files, timm's streaming
readers), image folders for inference (``IMAGE_EXTENSIONS``, ``list_images``), the transforms of each
stage (one evaluation transform, ``eval_transform``, and ``model_eval_transform`` from a model's
preprocessing), samplers/loaders for (distributed) training, the feeder that
prepares training batches on the device one step ahead (``DeviceFeeder``), and the folder layouts and labels
of ImageNet's validation and robustness test sets (:mod:`armvision.data.benchmarks`)."""

from .datasets import STREAMING_PREFIXES, ReaderDataset, build_dataset, class_names_to_map, dataset_classes
from .fashion_mnist import CLASSES as FASHION_MNIST_CLASSES
from .fashion_mnist import DEFAULT_ROOT as FASHION_MNIST_ROOT
from .fashion_mnist import FashionMNIST, read_idx
from .loader import (MAX_LISTED_FILES, ResumableSampler, ShardSampler, Skips, collate, make_loader,
                     unreadable_report)
from .feeder import DeviceFeeder, copy_to_device
from .images import IMAGE_EXTENSIONS, ImageFiles, collate_readable, list_images
from .transforms import (
    NORMALIZATION,
    TensorCrop,
    data_config,
    eval_transform,
    finetune_transform,
    model_eval_transform,
    normalization,
    normalize_batch,
    pretrain_transform,
    reference_crop_pct,
    to_mode,
)

__all__ = [
    "build_dataset",
    "dataset_classes",
    "class_names_to_map",
    "ReaderDataset",
    "STREAMING_PREFIXES",
    "FashionMNIST",
    "FASHION_MNIST_ROOT",
    "FASHION_MNIST_CLASSES",
    "read_idx",
    "ResumableSampler",
    "ShardSampler",
    "collate",
    "make_loader",
    "DeviceFeeder",
    "copy_to_device",
    "Skips",
    "unreadable_report",
    "MAX_LISTED_FILES",
    "NORMALIZATION",
    "normalization",
    "normalize_batch",
    "pretrain_transform",
    "finetune_transform",
    "TensorCrop",
    "eval_transform",
    "to_mode",
    "reference_crop_pct",
    "data_config",
    "model_eval_transform",
    "IMAGE_EXTENSIONS",
    "list_images",
    "ImageFiles",
    "collate_readable",
]
