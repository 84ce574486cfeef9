#!/usr/bin/env bash
# Set up armvision on a fresh machine and run its demo, in one command:
#   1. find Fashion-MNIST (Debian's dataset-fashion-mnist, installed with apt-get when it is missing
#      and apt is usable; otherwise a folder given with --data-root);
#   2. pip-install this checkout (editable) unless --no-install;
#   3. run `armvision demo`, passing on every other argument.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: scripts/demo.sh [--data-root DIR] [--no-install] [DEMO OPTIONS...]

Sets up armvision and runs `armvision demo` (ARM pretraining -> fine-tuning vs from scratch on
Fashion-MNIST, about 6 minutes on 2 idle CPU cores).

  --data-root DIR   folder with the four Fashion-MNIST idx files (default: Debian's
                    /usr/share/datasets/fashion-mnist, installed with apt-get if missing)
  --no-install      do not run `pip install -e .` (armvision is installed already)
  -h, --help        this message

The environment variable PYTHON picks the interpreter (default python3; inside a virtual
environment that is the environment's).

Every other option goes to `armvision demo`, e.g. `scripts/demo.sh --profile smoke` (10-30 s)
or `scripts/demo.sh --output-dir runs/demo --seed 1`; `armvision demo --help` lists them.
EOF
}

DEBIAN_ROOT="${ARMVISION_FMNIST_DEFAULT:-/usr/share/datasets/fashion-mnist}"  # overridable for tests
PYTHON="${PYTHON:-python3}"
data_root=""
install=1
demo_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --no-install) install=0 ;;
    --data-root|--data_root)
      [ $# -ge 2 ] || { echo "scripts/demo.sh: error: $1 needs a folder" >&2; exit 2; }
      data_root="$2"; shift ;;
    --data-root=*|--data_root=*) data_root="${1#*=}" ;;
    *) demo_args+=("$1") ;;
  esac
  shift
done

FILES="train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz"

has_fmnist() {  # the four idx files, gzipped or not
  local d="$1" f
  for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    [ -f "$d/$f.gz" ] || [ -f "$d/$f" ] || return 1
  done
}

no_data() {
  echo "scripts/demo.sh: error: $1" >&2
  echo "  The demo needs Fashion-MNIST's four idx files ($FILES, gzipped or not)." >&2
  echo "  On Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist (puts them in /usr/share/datasets/fashion-mnist)." >&2
  echo "  Elsewhere: download them from https://github.com/zalandoresearch/fashion-mnist (folder data/fashion)" >&2
  echo "  into a folder DIR and run: scripts/demo.sh --data-root DIR" >&2
  exit 2
}

if [ -n "$data_root" ]; then
  has_fmnist "$data_root" || no_data "no Fashion-MNIST idx files in $data_root"
elif has_fmnist "$DEBIAN_ROOT"; then
  data_root="$DEBIAN_ROOT"
else
  SUDO=""
  if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
  if ! command -v apt-get >/dev/null 2>&1; then
    no_data "Fashion-MNIST is not in $DEBIAN_ROOT and apt-get is not available here to install it."
  fi
  if [ "$(id -u)" != "0" ] && [ -z "$SUDO" ]; then
    no_data "Fashion-MNIST is not in $DEBIAN_ROOT, and installing it with apt-get needs root or sudo."
  fi
  echo "installing Debian's dataset-fashion-mnist with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -q dataset-fashion-mnist \
    || { $SUDO apt-get update -q && $SUDO apt-get install -y -q dataset-fashion-mnist; } \
    || no_data "apt-get could not install dataset-fashion-mnist."
  has_fmnist "$DEBIAN_ROOT" || no_data "dataset-fashion-mnist is installed but $DEBIAN_ROOT lacks the idx files."
  data_root="$DEBIAN_ROOT"
fi

data_root="$(cd "$data_root" && pwd)"  # absolute, before leaving the caller's folder
cd "$(dirname "$0")/.."
if [ "$install" = 1 ]; then
  "$PYTHON" -m pip install -q -e .
fi
exec "$PYTHON" -m armvision demo --data-root "$data_root" ${demo_args[@]+"${demo_args[@]}"}
