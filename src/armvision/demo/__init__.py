"""The embedded demo: does autoregressive pretraining help on Fashion-MNIST?

* ``profiles.yaml`` -- the budgets (``cpu``, ``gpu``, ``smoke``) as data: config overrides of the
  fmnist_pretrain / fmnist_finetune presets, the evaluations and the seed noise, read by :mod:`.profiles` into
  :class:`DemoProfile`;
* :mod:`.run` -- :func:`run_demo` (pretraining, then the frozen-feature probes beside a random-init encoder and
  the raw pixels, and/or fine-tuning beside from scratch and the raw-pixel reference of
  :mod:`armvision.analysis.baseline`), the result tables (:func:`format_table`) and their verdicts
  (:func:`probe_verdict`, :func:`demo_verdict`).

:mod:`armvision.cli.train` adds ``armvision demo`` on top; ``armvision.train.run_demo`` calls :func:`run_demo`.
"""

from .profiles import PROFILES, DemoProfile, ProbeSettings, load_profiles
from .run import demo_verdict, format_table, probe_verdict, run_demo

__all__ = ["DemoProfile", "ProbeSettings", "PROFILES", "load_profiles", "run_demo", "format_table", "demo_verdict",
           "probe_verdict"]
