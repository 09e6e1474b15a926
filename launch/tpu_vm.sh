#!/usr/bin/env bash
# Train on a Cloud TPU VM slice: create it (or reuse it), check out this repository on every worker,
# install, and run main.py on all workers at once. JAX finds the other hosts by itself
# (rankclip_jax/distributed.py); the workdir must be reachable from every host: a gs:// bucket.
#
#   launch/tpu_vm.sh NAME ZONE ACCELERATOR CONFIG WORKDIR [--config.field=value ...]
#   launch/tpu_vm.sh rankclip-v4 us-central2-b v4-32 configs/rankclip_cc3m.py gs://my-bucket/runs/cc3m \
#       --config.data.train.path='/mnt/disks/cc3m/{00000..00331}.tar'
#
# Environment: REPO_URL (default: this checkout's origin), REV (default: this checkout's commit),
# RUNTIME (TPU VM image, default tpu-ubuntu2204-base), and the usual gcloud project settings.
# Running it again resumes the run (same WORKDIR) on the same slice; after a preemption, on a new one.
# The install is docs/installing.md's TPU line: requirements.txt plus jax[tpu] at the pinned JAX (libtpu from
# PyPI). The VM's python3 must be 3.11 or newer (python3 --version; pick a RUNTIME image that has it).
# Every value that goes into the workers' command (REPO_URL, REV, CONFIG, WORKDIR, the overrides)
# is quoted for their shell (bash's printf %q), so each reaches git and main.py exactly as given,
# whatever it holds; a REPO_URL or REV starting with '-' (which git would take as an option) is
# refused.
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: launch/tpu_vm.sh NAME ZONE ACCELERATOR CONFIG WORKDIR [overrides...]"
NAME=${1:?$usage}; ZONE=${2:?$usage}; ACCELERATOR=${3:?$usage}; CONFIG=${4:?$usage}
WORKDIR=${5:?$usage}
shift 5
REPO_URL=${REPO_URL:-$(git remote get-url origin)}
REV=${REV:-$(git rev-parse HEAD)}
RUNTIME=${RUNTIME:-tpu-ubuntu2204-base}
JAX_VERSION=$(sed -n 's/^jax==//p' requirements.txt)
for name in REPO_URL REV; do
  if [[ -z ${!name} || ${!name} == -* ]]; then
    echo "Error: $name='${!name}' must be a git URL or revision not starting with '-'." >&2
    exit 2
  fi
done

if ! gcloud compute tpus tpu-vm describe "$NAME" --zone="$ZONE" >/dev/null 2>&1; then
  gcloud compute tpus tpu-vm create "$NAME" --zone="$ZONE" --accelerator-type="$ACCELERATOR" \
    --version="$RUNTIME"
fi

# Each value quoted for the workers' bash (never pasted inside quotes of our own).
q() { printf '%q' "$1"; }
OVERRIDES=""
if (($#)); then OVERRIDES=$(printf ' %q' "$@"); fi
gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker=all --command="
  set -e
  [ -d rankclip_jax ] || git clone -q -- $(q "$REPO_URL") rankclip_jax
  cd rankclip_jax && git fetch -q origin && git checkout -q $(q "$REV")
  [ -d .venv ] || python3 -m venv .venv
  . .venv/bin/activate
  pip install -q -r requirements.txt $(q "jax[tpu]==$JAX_VERSION")
  python main.py $(q "--config=$CONFIG") $(q "--workdir=$WORKDIR")$OVERRIDES
"
