import importlib.util
import json
import os
import sys

import numpy as np
import pytest
from PIL import Image

from comfy_server import COMFYUI_DIR, COMFYUI_FRONTEND, COMFYUI_PYTHON, REPO, ComfyServer
from graphs import DEPTH_MODEL, INPAINT_IMAGE, INPUT_IMAGE, ORIGINAL_WEIGHTS, SINGLE_UNET, SIZE
from lora_files import write_example_loras


def pytest_configure(config):
    config.addinivalue_line("markers", "comfyui: drives a real ComfyUI server (uses the `comfy` fixture); "
                            "CI runs these once per ComfyUI version")
    config.addinivalue_line("markers", "browser: drives the ComfyUI frontend in Chromium (uses the `browser` fixture); "
                            "CI runs these once more with the newest frontend")


def pytest_collection_modifyitems(items):
    """Mark every test by the fixtures it uses, so that `-m comfyui` / `-m "not comfyui"` split the suite, whichever
    file a test is in."""
    for item in items:
        used = getattr(item, "fixturenames", ())
        if "comfy" in used:
            item.add_marker(pytest.mark.comfyui)
        if "browser" in used:
            item.add_marker(pytest.mark.browser)


def pytest_report_header():
    frontend = COMFYUI_FRONTEND or "the one it pins"
    return f"ComfyUI: {COMFYUI_DIR} (server python {COMFYUI_PYTHON}; frontend {frontend})"


def write_models(root):
    """Every tiny Kandinsky repo folder, a tiny depth model and the 2.2 decoder's UNet as a lone file, under `root`."""
    from kandinsky_core.kandinsky2 import loading, tiny  # imported here: only sessions that start a server need them
    import k3_files

    folders = tiny.write_all(str(root))
    tiny.write_depth_model(str(root / DEPTH_MODEL))
    unet = os.path.join(folders["kandinsky-2-2-decoder"], "unet")
    with open(os.path.join(unet, "config.json")) as f:
        config = json.load(f)
    (root / SINGLE_UNET).parent.mkdir(parents=True)
    tiny.save_single_file(loading.load_component(unet, "unet"), config, str(root / SINGLE_UNET))
    write_example_loras(root.parent / "loras", root)  # models/loras: the LoRA example workflow's files
    k3_files.write_all(str(root))  # kandinsky-3/, and one with a T5 of another width
    from kandinsky_core.kandinsky3 import tiny_original
    tiny_original.write_kandinsky31(str(root / ORIGINAL_WEIGHTS))  # ai-forever/Kandinsky3.1's weights/ folder


def write_inputs(folder):
    """A random RGB image and the same image with a transparent central square (the inpainting hole)."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(folder / INPUT_IMAGE)
    alpha = np.full((SIZE, SIZE, 1), 255, np.uint8)
    alpha[SIZE // 4: -SIZE // 4, SIZE // 4: -SIZE // 4] = 0
    Image.fromarray(np.concatenate([rgb, alpha], axis=-1)).save(folder / INPAINT_IMAGE)


@pytest.fixture(scope="session")
def comfyui_in_process():
    """ComfyUI's tree made importable in the test process (`import comfy...`), the one the server runs. Skips where
    the server runs under its own interpreter (ComfyUI 0.30.0 in .comfyui030/venv): its packages (comfy_aimdo,
    comfy_kitchen, ...) are not in the test process's environment."""
    if os.path.abspath(COMFYUI_PYTHON) != os.path.abspath(sys.executable):
        pytest.skip(f"ComfyUI {COMFYUI_DIR} runs under {COMFYUI_PYTHON}; it cannot be imported in this process")
    if str(COMFYUI_DIR) not in sys.path:
        sys.path.append(str(COMFYUI_DIR))
    return COMFYUI_DIR


@pytest.fixture(scope="session")
def kandinsky_pack(comfyui_in_process):
    """This repository imported in the test process as the package `kandinsky_pack` (ComfyUI on the CPU), so tests can
    call the node layer's functions with ComfyUI's real objects."""
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    if "kandinsky_pack" not in sys.modules:
        spec = importlib.util.spec_from_file_location("kandinsky_pack", REPO / "__init__.py",
                                                      submodule_search_locations=[str(REPO)])
        module = importlib.util.module_from_spec(spec)
        sys.modules["kandinsky_pack"] = module
        spec.loader.exec_module(module)
    return sys.modules["kandinsky_pack"]


@pytest.fixture(scope="session")
def comfy(tmp_path_factory):
    """One real ComfyUI server for the whole session, with this repository installed as custom node pack and tiny
    checkpoints (graphs.PRIORS, graphs.DECODERS, ...) and input images (graphs.INPUT_IMAGE, ...) in its folders."""
    if not COMFYUI_DIR.is_dir():
        pytest.skip(f"ComfyUI not installed at {COMFYUI_DIR}: run tools/install_comfyui.sh or set COMFYUI_DIR")
    base = tmp_path_factory.mktemp("comfyui")
    write_models(base / "models" / "kandinsky")
    write_inputs(base / "input")
    with ComfyServer(base, pack_dir=REPO, pack_name="comfyui-kandinsky2") as server:
        yield server
