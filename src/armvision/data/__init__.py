"""Data: datasets (ImageFolder/tar via timm readers, Fashion-MNIST idx files, timm's streaming
readers), the transforms of each stage, and samplers/loaders for (distributed) training."""

from .datasets import STREAMING_PREFIXES, ReaderDataset, build_dataset, class_names_to_map, dataset_classes
from .fashion_mnist import CLASSES as FASHION_MNIST_CLASSES
from .fashion_mnist import DEFAULT_ROOT as FASHION_MNIST_ROOT
from .fashion_mnist import FashionMNIST, read_idx
from .loader import ResumableSampler, ShardSampler, collate, make_loader
from .transforms import NORMALIZATION, eval_transform, finetune_transform, normalization, pretrain_transform, to_mode

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
    "NORMALIZATION",
    "normalization",
    "pretrain_transform",
    "finetune_transform",
    "eval_transform",
    "to_mode",
]
