import pytest

from comfy_server import COMFYUI_DIR, REPO, ComfyServer


@pytest.fixture(scope="session")
def comfy(tmp_path_factory):
    """One real ComfyUI server for the whole session, with this repository installed as custom node pack."""
    if not COMFYUI_DIR.is_dir():
        pytest.skip(f"ComfyUI not installed at {COMFYUI_DIR}: run tools/install_comfyui.sh or set COMFYUI_DIR")
    with ComfyServer(tmp_path_factory.mktemp("comfyui"), pack_dir=REPO, pack_name="comfyui-kandinsky2") as server:
        yield server
