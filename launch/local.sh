#!/usr/bin/env bash
# Local run on this machine's devices (CPU, one GPU, or all local GPUs).
#   launch/local.sh configs/rankclip_synthetic.py runs/demo [--config.field=value ...]
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${1:?usage: launch/local.sh CONFIG WORKDIR [overrides...]}
WORKDIR=${2:?usage: launch/local.sh CONFIG WORKDIR [overrides...]}
shift 2
exec python main.py --config="$CONFIG" --workdir="$WORKDIR" "$@"
