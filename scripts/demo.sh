#!/usr/bin/env bash
# Quick start 1: set up, then sample the 10 output neurons of zoo:lenet-mnist.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/ldam demo "$@"
