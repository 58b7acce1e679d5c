#!/usr/bin/env bash
# Set up idarts on a fresh machine: Fashion-MNIST from Debian, then the .venv.
# Safe to run again: finished steps are quick no-ops.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

data_dir=/usr/share/datasets/fashion-mnist
if [ ! -f "$data_dir/train-images-idx3-ubyte.gz" ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        echo "Installing Debian's dataset-fashion-mnist into $data_dir"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist
    else
        echo "Fashion-MNIST is missing from $data_dir and this script cannot install it." >&2
        echo "Run 'sudo apt-get install dataset-fashion-mnist' (Debian/Ubuntu), or download the" >&2
        echo "four *-ubyte.gz files of Fashion-MNIST into a folder and pass --data-dir FOLDER." >&2
    fi
fi

python_bin="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$python_bin" -m venv .venv
fi
.venv/bin/python -m pip install --quiet -e '.[tune,analysis,test]'
echo "idarts is installed in $repo_root/.venv"
