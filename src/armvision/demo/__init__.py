"""The embedded demo: does autoregressive pretraining help on Fashion-MNIST?

* ``profiles.yaml`` -- the budgets (``cpu``, ``gpu``, ``smoke``) as data: config overrides of the
  fmnist_pretrain / fmnist_finetune presets, read by :mod:`.profiles` into :class:`DemoProfile`;
* :mod:`.run` -- :func:`run_demo` (pretraining, fine-tuning and from-scratch runs through
  :func:`armvision.train.train`, plus the raw-pixel reference of :mod:`armvision.analysis.baseline`),
  the result table (:func:`format_table`) and its verdict line (:func:`demo_verdict`).

:mod:`armvision.cli.train` adds ``armvision demo`` on top; ``armvision.train.run_demo`` calls :func:`run_demo`.
"""

from .profiles import PROFILES, DemoProfile, load_profiles
from .run import demo_verdict, format_table, run_demo

__all__ = ["DemoProfile", "PROFILES", "load_profiles", "run_demo", "format_table", "demo_verdict"]
