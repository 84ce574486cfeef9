"""Launch-configuration sweep of the Triton scan kernels (run on a GPU; prints tables).

    python benchmarks/sweep_scan.py [--shape 256 768 128]

For each chunk length BT: the forward over (BE, num_warps, num_stages), then the backward over the
same (the backward's dB/dC channel sums use the shuffle reduce-scatter when BE == 32 on one warp),
at one bf16 shape. The chosen defaults go into armvision/ops/scan_triton.py (_CONFIG).
"""

import argparse
import sys
from pathlib import Path

import torch
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scan import make_inputs  # noqa: E402

from armvision.ops import scan_triton as st  # noqa: E402

FWD_CONFIGS = [(32, 1, 1), (16, 1, 1), (8, 1, 1), (64, 2, 1), (32, 2, 1)]
BWD_CONFIGS = [(32, 1, 1), (16, 1, 1), (8, 1, 1), (64, 2, 1), (32, 1, 2)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", type=int, nargs=3, default=[256, 768, 128], metavar=("B", "E", "T"))
    ap.add_argument("--chunks", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--table", action="store_true", help="then print benchmarks/scan.py's anchor table with the best")
    args = ap.parse_args()
    b, e, t = args.shape
    inp = make_inputs(b, e, t)
    dout = torch.randn(b, t, e, device="cuda", dtype=torch.bfloat16)
    a = [inp[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    best = {}
    for BT in args.chunks:
        st.scan_launch_config(BT=BT)
        for which in ("fwd", "bwd"):
            res = {}
            for cfg in (FWD_CONFIGS if which == "fwd" else BWD_CONFIGS):
                st.scan_launch_config(**{which: cfg})
                try:
                    if which == "fwd":
                        ms = do_bench(lambda: st.scan_fwd(*a, None, True, True), warmup=10, rep=60, return_mode="median")
                    else:
                        _, states, chunk = st.scan_fwd(*a, None, True, True)
                        ms = do_bench(lambda: st.scan_bwd(*a, None, states, dout, True, chunk), warmup=10, rep=60,
                                      return_mode="median")
                    res[cfg] = ms
                except Exception as ex:  # noqa: BLE001 - report and go on
                    print(f"BT={BT} {which} {cfg}: {type(ex).__name__} {str(ex)[:100]}")
            if not res:
                continue
            top = min(res, key=res.get)
            st.scan_launch_config(**{which: top})
            best[(BT, which)] = (top, res[top])
            print(f"BT={BT} {which}: " + "  ".join(f"{c}={v:.3f}" for c, v in sorted(res.items(), key=lambda x: x[1])),
                  flush=True)
    print(f"\nbest per chunk length at b={b} e={e} t={t} (bf16):")
    for BT in args.chunks:
        if (BT, "fwd") in best and (BT, "bwd") in best:
            (cf, tf), (cb, tb) = best[(BT, "fwd")], best[(BT, "bwd")]
            print(f"  BT={BT}: fwd {cf} {tf:.3f} ms + bwd {cb} {tb:.3f} ms = {tf + tb:.3f} ms")
    if args.table and best:
        BT = min(args.chunks, key=lambda c: best[(c, "fwd")][1] + best[(c, "bwd")][1])
        (cf, _), (cb, _) = best[(BT, "fwd")], best[(BT, "bwd")]
        st.scan_launch_config(BT=BT, fwd=cf, bwd=cb)
        import scan

        sys.argv = [sys.argv[0], "--no-torch"]
        scan.main()


if __name__ == "__main__":
    main()
