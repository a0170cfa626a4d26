#!/usr/bin/env bash
# Quick start 1: set up, then start the live UI (open the printed URL; Ctrl-C stops it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/ldam serve zoo:lenet-mnist zoo:vgg-cifar10 zoo:efficientnet-lite0-imagenet "$@"
