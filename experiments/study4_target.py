"""Study 4: the prediction target. Per-patch normalised pixels (the paper's) vs raw pixels (after the data
mean/std normalisation); linear probe and k-NN of each (the losses are not comparable across targets)."""

from __future__ import annotations

from study2_unit import run_conditions

CONDITIONS = {"normalised pixels": {"target": "norm_pix"}, "raw pixels": {"target": "pix"}}


def main(argv=None) -> dict:
    return run_conditions(argv, CONDITIONS,
                          "study4_target", "Study 4: target (Fashion-MNIST test top-1, %)",
                          __doc__)


if __name__ == "__main__":
    main()
