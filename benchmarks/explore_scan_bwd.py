"""Exploration: where the scan backward's time goes (run on a GPU; prints a table).

Times the backward kernel over launch configurations, and a copy of it built without the dB/dC
channel reductions (generated at run time, never used for results) to measure what those cost.
"""

import importlib.util
import re
import sys
import tempfile
from pathlib import Path

import torch
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scan import make_inputs  # noqa: E402

from armvision.ops import scan_triton as st  # noqa: E402


def load_variant(name, transform):
    src = Path(st.__file__).read_text()
    src = transform(src).replace("armvision::", f"armvision_{name}::")
    path = Path(tempfile.mkdtemp()) / f"scan_{name}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(f"scan_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def no_dbc(src):
    return re.sub(r"\n\s+tl\.store\(d[BC]_ptr \+ part.*", "", src)


def main():
    b, e, t = 256, 768, 128
    inp = make_inputs(b, e, t)
    dout = torch.randn(b, t, e, device="cuda", dtype=torch.bfloat16)
    args = [inp[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    mods = {"kernel": st, "no dB/dC": load_variant("nodbc", no_dbc)}
    print(f"backward at b={b} e={e} t={t} bf16 (ms); forward config {st.scan_launch_config()['fwd']}")
    for BT in (2, 4, 8):
        for cfg in ((32, 1), (64, 2), (16, 1), (8, 1), (128, 4)):
            row = []
            for name, mod in mods.items():
                mod.scan_launch_config(BT=BT, bwd=cfg)
                _, states, chunk = mod.scan_fwd(*args, None, True, True)
                try:
                    ms = do_bench(lambda: mod.scan_bwd(*args, None, states, dout, True, chunk), warmup=10, rep=60,
                                  return_mode="median")
                    row.append(f"{name}: {ms:6.3f}")
                except Exception as ex:  # noqa: BLE001
                    row.append(f"{name}: {type(ex).__name__}")
            fwd = do_bench(lambda: st.scan_fwd(*args, None, True, True), warmup=10, rep=60, return_mode="median")
            print(f"BT={BT} bwd={cfg}: fwd {fwd:.3f} | " + " | ".join(row), flush=True)


if __name__ == "__main__":
    main()
