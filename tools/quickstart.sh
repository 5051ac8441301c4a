#!/usr/bin/env bash
# From a fresh clone to a first image: a virtualenv, torch, ComfyUI 0.3.75 and this pack, then the demo.
#
# Usage: bash tools/quickstart.sh              # tiny random checkpoints: no weights needed, about a minute on a CPU
#        bash tools/quickstart.sh MODELS_DIR   # the published checkpoints, e.g. ~/ComfyUI/models/kandinsky
#
# Needs Python 3.10+ with venv (Debian/Ubuntu: apt-get install python3-venv). Everything goes into .venv and
# .comfyui/ inside the clone; a re-run reuses them. The last line printed is the path of the saved image.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1

if [ $# -gt 1 ] || [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
    sed -n '2,8s/^# \{0,1\}//p' "$0"
    exit 2
fi
if [ $# = 1 ] && [ ! -d "$1" ]; then
    echo "quickstart.sh: $1 is not a folder; give the models/kandinsky folder that holds the checkpoint folders" >&2
    exit 2
fi
if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    echo "quickstart.sh: Python 3.10 or newer is needed; python3 is $(python3 -V 2>&1)" >&2
    exit 1
fi

step() { echo "== $*"; }

step "virtualenv .venv"
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv || {
        echo "quickstart.sh: could not create a virtualenv: install python3-venv (Debian/Ubuntu) and re-run" >&2
        exit 1
    }
fi
. .venv/bin/activate

step "torch"
# The CPU build of torch 2.13.0 where pip's local wheel folders (find-links) carry it; anywhere else, pip's choice for
# this machine. Only torch itself is looked up offline: its dependencies come from the index either way.
if ! python -c 'import torch' 2>/dev/null; then
    local_wheel=$(mktemp -d)
    if pip download -q --no-index --no-deps -d "$local_wheel" torch==2.13.0 2>/dev/null; then
        pip install -q torch==2.13.0
    else
        pip install -q torch
    fi
    rm -rf "$local_wheel"
fi

step "ComfyUI 0.3.75 (.comfyui/ComfyUI) and this pack"
bash tools/install_comfyui.sh
pip install -q -e .

step "demo"
out=$PWD/out/quickstart.png
mkdir -p "$(dirname "$out")"
if [ $# = 1 ]; then
    python tools/demo.py --models "$1" --out "$out"
else
    python tools/demo.py --tiny --out "$out"
fi
