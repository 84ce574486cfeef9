"""Study 3: the order of the clusters. Row-major (the paper's), column-major (the transpose), and a fixed
random permutation of the clusters (order_seed 0), clusters of 2x2 patches; linear probe and k-NN of each."""

from __future__ import annotations

from study2_unit import run_conditions

CONDITIONS = {"row-major": {"cluster_order": "row"}, "column-major": {"cluster_order": "column"},
              "random": {"cluster_order": "random"}}


def main(argv=None) -> dict:
    return run_conditions(argv, CONDITIONS,
                          "study3_order", "Study 3: cluster order (Fashion-MNIST test top-1, %)",
                          __doc__)


if __name__ == "__main__":
    main()
