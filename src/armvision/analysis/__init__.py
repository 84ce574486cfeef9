"""Evidence that a model learned something: frozen-feature evaluation, pictures, predictions.

* :mod:`.features` -- extract pooled features of a dataset split once (cached in memory);
* :mod:`.probe` -- linear probe (BatchNorm without affine + Linear, a learning-rate sweep) and
  weighted k-NN (DINO's) on cached features;
* :mod:`.visualize` -- what a pretraining model predicts: one-step predictions and a fully
  autoregressive completion, drawn with matplotlib;
* :mod:`.predict` -- top-k classes of image files from a fine-tuned classifier.

Every function takes models and tensors; :mod:`.cli` adds ``armvision linprobe | knn | visualize | predict``.
"""

from ._load import LoadedModel, load_for_analysis
from .features import FeatureSet, data_setup, extract_dataset_features
from .predict import predict_files, predict_images
from .probe import KnnResult, LinearProbeResult, knn_classify, linear_probe
from .visualize import autoregressive_completion, one_step_prediction, render_panels

__all__ = [
    "LoadedModel",
    "load_for_analysis",
    "FeatureSet",
    "data_setup",
    "extract_dataset_features",
    "linear_probe",
    "LinearProbeResult",
    "knn_classify",
    "KnnResult",
    "one_step_prediction",
    "autoregressive_completion",
    "render_panels",
    "predict_images",
    "predict_files",
]
