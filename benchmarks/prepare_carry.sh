#!/usr/bin/env bash
# Fill the folder that benchmarks/device_call.sh takes to the GPU machine (default .carry), from the repository root:
#   bash benchmarks/prepare_carry.sh ARM_CHECKOUT [DIR]
# ARM_CHECKOUT: a checkout (or a bare mirror) of OliverRensu/ARM, the official code: copied to DIR/ARM without its
# git history (it is never committed here). The two sdists the reference is built from (mamba-ssm 2.3.2.post1,
# causal-conv1d 1.7.0) are downloaded into DIR with pip unless they are there already; pip prepares their metadata
# without build isolation, so run it in an environment that has torch (the project's .venv). DIR is added to
# .git/info/exclude, so that it travels only when a call names it in `carry`. Prebuilt CUDA modules from an earlier
# call (*.so.xz) go into DIR/cuda_ext/ by hand (benchmarks/README.md).
set -euo pipefail
die() { echo "prepare_carry.sh: $*" >&2; exit 2; }
[ $# -ge 1 ] && [ $# -le 2 ] || die "usage: bash benchmarks/prepare_carry.sh ARM_CHECKOUT [DIR] (from the repository root)"
ARM=$1
DIR=${2:-.carry}
[ -d .git ] || die "run it from the repository root (no .git here)"
[ -d "$ARM" ] || die "$ARM: no such folder; give a checkout of OliverRensu/ARM"
mkdir -p "$DIR" .git/info
grep -qxF "$DIR/" .git/info/exclude 2>/dev/null || echo "$DIR/" >> .git/info/exclude
TMP="$DIR/.ARM.tmp"  # the copy is checked before it replaces an earlier DIR/ARM
rm -rf "$TMP"
if [ -f "$ARM/models_pretrain.py" ]; then
  cp -r "$ARM" "$TMP"
elif [ "$(git -C "$ARM" rev-parse --is-bare-repository 2>/dev/null)" = true ]; then  # a bare mirror: its newest commit
  git clone -q "$ARM" "$TMP" || { rm -rf "$TMP"; die "git could not check out $ARM"; }
else
  die "$ARM has no models_pretrain.py: give a checkout (or a bare mirror) of OliverRensu/ARM"
fi
rm -rf "$TMP/.git"
for f in models_pretrain.py Finetuning/models_mamba.py; do
  [ -f "$TMP/$f" ] || { rm -rf "$TMP"; die "$ARM has no $f: not a checkout of OliverRensu/ARM"; }
done
rm -rf "$DIR/ARM" && mv "$TMP" "$DIR/ARM"
for spec in mamba-ssm==2.3.2.post1:mamba_ssm-2.3.2.post1.tar.gz causal-conv1d==1.7.0:causal_conv1d-1.7.0.tar.gz; do
  req=${spec%%:*} file=${spec#*:}
  if [ ! -s "$DIR/$file" ]; then
    python3 -m pip download -q --no-deps --no-binary :all: --no-build-isolation "$req" -d "$DIR" \
      || die "pip could not download $req (it needs the package index and torch in this environment)"
  fi
done
printf '%s: ARM/' "$DIR"
for f in "$DIR"/*.tar.gz; do printf ', %s' "${f##*/}"; done
if [ -d "$DIR/cuda_ext" ]; then printf ', cuda_ext/ (%s prebuilt modules)' "$(find "$DIR/cuda_ext" -name '*.so.xz' | wc -l)"; fi
echo
echo "now: run(command='bash benchmarks/device_call.sh $DIR', carry=['$DIR'])"
