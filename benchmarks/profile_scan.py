"""Run the Triton scan once (forward + backward) at one shape and config, for Nsight Compute.

    ncu -k regex:_scan_bwd_kernel -c 1 --section SpeedOfLight --section WarpStateStats \
        python benchmarks/profile_scan.py --bt 4 --fwd 16 1 1 --bwd 16 1 2
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scan import make_inputs  # noqa: E402

from armvision.ops import scan_triton as st  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--shape", type=int, nargs=3, default=[256, 768, 128])
ap.add_argument("--bt", type=int, default=4)
ap.add_argument("--fwd", type=int, nargs=3, default=[16, 1, 1])
ap.add_argument("--bwd", type=int, nargs=3, default=[16, 1, 2])
args = ap.parse_args()
st.scan_launch_config(BT=args.bt, fwd=tuple(args.fwd), bwd=tuple(args.bwd))
b, e, t = args.shape
inp = make_inputs(b, e, t)
a = [inp[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
dout = torch.randn(b, t, e, device="cuda", dtype=torch.bfloat16)
for _ in range(2):
    out, states, chunk = st.scan_fwd(*a, None, True, True)
    st.scan_bwd(*a, None, states, dout, True, chunk)
torch.cuda.synchronize()
print("done")
