"""Smoke test of the ComfyUI harness (tests/comfy_server.py) against a real server, using only core nodes."""
import io
import urllib.request
import uuid

import pytest
from PIL import Image

from comfy_server import DYNAMIC_VRAM, PromptError


def empty_image_prompt(width, height, prefix):
    """EmptyImage -> SaveImage: needs no model files."""
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": width, "height": height, "batch_size": 1, "color": 0xFF8000},
        },
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    }


def test_core_prompt_runs_and_serves_png(comfy):
    prefix = f"harness_{uuid.uuid4().hex[:8]}"
    with comfy.listen() as ws:
        prompt_id = comfy.queue(empty_image_prompt(48, 32, prefix))
        entry = comfy.wait(prompt_id, timeout=60)
        messages = ws.wait_for(prompt_id, timeout=10)

    assert entry["status"]["status_str"] == "success", entry["status"]
    (image,) = entry["outputs"]["2"]["images"]
    assert image["type"] == "output" and image["filename"].startswith(prefix)
    png = comfy.get_image(image["filename"], image["subfolder"], image["type"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    decoded = Image.open(io.BytesIO(png))
    assert decoded.size == (48, 32)
    assert decoded.convert("RGB").getpixel((5, 5)) == (0xFF, 0x80, 0x00)

    executed = [m["data"]["node"] for m in messages if m["type"] == "executing"]
    assert executed == ["1", "2"]
    assert messages[-1]["type"] == "execution_success"


def test_bad_prompt_returns_node_errors_and_server_keeps_serving(comfy):
    bad = empty_image_prompt(48, 32, "never_written")
    del bad["1"]["inputs"]["width"]
    bad["1"]["inputs"]["no_such_input"] = 1
    with pytest.raises(PromptError) as info:
        comfy.queue(bad)
    (error,) = info.value.node_errors["1"]["errors"]
    assert error["type"] == "required_input_missing" and "width" in error["details"]

    with pytest.raises(PromptError) as info:
        comfy.queue({"1": {"class_type": "NoSuchNode", "inputs": {}}})
    assert "NoSuchNode" in info.value.error["message"] and info.value.node_errors == {}

    entry = comfy.wait(comfy.queue(empty_image_prompt(16, 16, f"after_error_{uuid.uuid4().hex[:8]}")), timeout=60)
    assert entry["status"]["status_str"] == "success"


def test_object_info_and_frontend(comfy):
    assert "images" in comfy.object_info("SaveImage")["input"]["required"]
    assert "EmptyImage" in comfy.object_info()
    with pytest.raises(KeyError):
        comfy.object_info("NoSuchNode")
    with urllib.request.urlopen(comfy.url + "/", timeout=10) as response:
        assert b"<html" in response.read().lower()


@pytest.mark.skipif(not DYNAMIC_VRAM, reason="COMFYUI_DYNAMIC_VRAM=1 runs the servers with DynamicVRAM forced on")
def test_dynamic_vram_weight_path_is_on(comfy):
    """The session whose servers run through dynamic_vram_main.py really has DynamicVRAM's lazily allocating layers
    and its patcher class in the server process (the launcher says so once both are set)."""
    log = comfy.log_path.read_text(errors="replace")
    assert "dynamic_vram_main: DynamicVRAM weight path on" in log, log[-2000:]
