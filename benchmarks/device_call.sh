#!/usr/bin/env bash
# The measurement of benchmarks/README.md in one call on a lent GPU machine (one H100 or H200, 16 cores), about
# 9 minutes: the reference built there and timed beside armvision, the GPU tests, everything written into $OUT:
#   env.log       the card, the driver, the software
#   compare.log   the driver's progress and the final table (benchmarks/compare.py)
#   compare.json  every number, with each step's exit code and seconds
#   details.log   every subprocess's full output (builds, benchmarks, tests)
# Run from the repository root, with the carried folder (default .carry) holding ARM/ (a checkout of
# OliverRensu/ARM: the official code, never committed), mamba_ssm-2.3.2.post1.tar.gz and causal_conv1d-1.7.0.tar.gz:
#   bash benchmarks/device_call.sh [.carry]
# Extra arguments for compare.py go in COMPARE_ARGS (e.g. COMPARE_ARGS="--budget 480 --variants default before").
# The two CUDA builds (about 290 s) are kept: each built module is written to $OUT as NAME-KEY.so.xz; put those
# files in the carried folder's cuda_ext/ and the next call loads them instead of compiling (benchmarks/_cuda_ext.py).
# Inductor's matrix-product timings of a max_autotune variant come back as inductor_autotune-HASH.json: commit them
# into benchmarks/autotune/ and the next call does not time those products again (benchmarks/_autotune_cache.py).
set -uo pipefail
CARRY=${1:-.carry}
: "${OUT:?set OUT to the folder for the results}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export ARMVISION_CUDA_EXT_SAVE="${ARMVISION_CUDA_EXT_SAVE:-$OUT}"
# inductor's cache (compiled kernels, autotuning and coordinate-descent results) in an ignored folder of the
# repository: a later call on the same warm machine keeps ignored build outputs, so it compiles from this call's cache
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-$PWD/.inductor_cache}"
if [ -d "$CARRY/cuda_ext" ]; then export ARMVISION_CUDA_EXT_PREBUILT="$(cd "$CARRY/cuda_ext" && pwd)"; fi
# COMPARE_ARGS is split as a shell splits a command line, quotes honoured: --numerics '' is an empty value (a plain
# unquoted expansion would pass the two quote characters, and compare.py would run the numerics with -k "''")
if ! eval "extra=(${COMPARE_ARGS:-})" 2>/dev/null; then
  echo "device_call.sh: COMPARE_ARGS is not a valid shell word list: ${COMPARE_ARGS}" >&2
  exit 2
fi
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  echo "cores: $(nproc)"
  python3 -c "import sys, torch, triton, torchvision; print(sys.version.split()[0], 'torch', torch.__version__,
'triton', triton.__version__, 'torchvision', torchvision.__version__)"
} 2>&1 | tee "$OUT/env.log"
python3 benchmarks/compare.py --out "$OUT" --arm-src "$CARRY/ARM" \
  --mamba-ssm-src "$CARRY/mamba_ssm-2.3.2.post1.tar.gz" --causal-conv1d-src "$CARRY/causal_conv1d-1.7.0.tar.gz" \
  "${extra[@]}" 2>&1 | tee "$OUT/compare.log"
