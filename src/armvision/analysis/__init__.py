"""Evidence that a model learned something: frozen-feature evaluation, pictures, predictions.

* :mod:`.features` -- extract pooled features of a dataset split once (cached in memory);
* :mod:`.probe` -- linear probe (BatchNorm without affine + Linear, a learning-rate sweep) and
  weighted k-NN (DINO's) on cached features;
* :mod:`.visualize` -- what a pretraining model predicts: one-step predictions and a fully
  autoregressive completion, drawn with matplotlib;
* :mod:`.predict` -- top-k classes of image files from a fine-tuned classifier;
* :mod:`.frozen` -- the whole frozen-feature evaluation of a model or checkpoint (splits -> features ->
  linear probe / k-NN -> one result dict): :func:`probe_model`, :func:`probe_checkpoint`;
* :mod:`.baseline` -- a reference without a network: a linear classifier on raw Fashion-MNIST pixels.

:mod:`armvision.cli.analysis` adds ``armvision linprobe | knn | visualize | predict`` on top.
"""

from ._load import LoadedModel, load_for_analysis
from .features import FeatureSet, data_setup, extract_dataset_features
from .frozen import KnnSettings, LinearProbeSettings, probe_checkpoint, probe_features, probe_model
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
    "LinearProbeSettings",
    "KnnSettings",
    "probe_model",
    "probe_features",
    "probe_checkpoint",
    "one_step_prediction",
    "autoregressive_completion",
    "render_panels",
    "predict_images",
    "predict_files",
]
