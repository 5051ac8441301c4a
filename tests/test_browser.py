"""The example workflows and the web extension, in the real ComfyUI frontend (headless Chromium, Playwright).

Each example workflow is opened as a user opens it, converted to an API prompt by the frontend itself, queued with
the frontend's own queue and run on the tiny test checkpoints until its image shows on the output node. A
screenshot of each ends up in test-artifacts/screenshots/.
"""
import json
import re
import urllib.request

import pytest

from browser_support import browser_fixture, frontend_fixture  # noqa: F401  (the `browser` and `frontend` fixtures)
from comfy_server import REPO
from graphs import DEPTH_MODEL, INPUT_IMAGE, SIZE

EXAMPLES = REPO / "example_workflows"
WORKFLOWS = sorted(EXAMPLES.glob("*.json"))
VIRTUAL = {"MarkdownNote", "Note"}  # frontend-only nodes, never part of a prompt
OUTPUT_NODES = {"SaveImage", "PreviewImage", "SaveAnimatedWEBP"}
LOADER_WIDGETS = {"Kandinsky2PriorLoader", "Kandinsky2DecoderLoader", "Kandinsky2MoVQLoader", "Kandinsky2DepthModelLoader",
                  "Kandinsky3UNetLoader", "Kandinsky3T5Loader", "Kandinsky3OriginalUNetLoader"}
# The examples use real sizes and step counts. On two CPU cores the tiny test checkpoints must run in seconds, so the
# test lowers them through the frontend, as a user editing the widgets would, before queueing (4 decoder steps: the
# image-to-image examples need denoise x steps >= 1).
FAST = [("EmptyLatentImage", "width", SIZE), ("EmptyLatentImage", "height", SIZE), ("ImageScale", "width", SIZE),
        ("ImageScale", "height", SIZE), ("Kandinsky2PriorEncode", "steps", 2), ("Kandinsky2Interpolate", "steps", 2),
        ("Kandinsky2Emb2Emb", "steps", 4), ("Kandinsky2DecoderSampler", "steps", 4), ("KSampler", "steps", 2),
        ("Kandinsky3Sampler", "steps", 4),
        ("Kandinsky2DepthModelLoader", "depth_model", DEPTH_MODEL)]


def load_workflow(path):
    """A workflow file as a dict."""
    return json.loads(path.read_text())


def links_by_input(workflow):
    """{(target node id, input name): [source node id, output slot]} of a UI-format workflow."""
    nodes = {n["id"]: n for n in workflow["nodes"]}
    return {(str(dst), nodes[dst]["inputs"][slot]["name"]): [str(src), src_slot]
            for _, src, src_slot, dst, slot, _ in workflow["links"]}


def make_fast(ui, workflow):
    """Shrink the run for the test server (see FAST) and point file choices at the files it has."""
    for node_type, widget, value in FAST:
        ui.set_widget(node_type, widget, value)
    if ui.set_widget("Kandinsky2InterpolateBatch", "frames", 2):
        ui.set_widget("EmptyLatentImage", "batch_size", 2)  # one latent per frame, as the example's note says
    # An RGB image without alpha, as ComfyUI's own example.png that the examples ship with: Load Image then gives its
    # 64x64 empty mask, which the inpainting example must take as it comes.
    ui.set_widget("LoadImage", "image", INPUT_IMAGE)


def missing_on_server(comfy, workflow):
    """The workflow's `models` entries whose file the test server does not have (what the dialog must list)."""
    root = comfy.base_dir / "models"
    return sorted(f"{m['directory']}/{m['name']}" for m in workflow["models"]
                  if not (root / m["directory"] / m["name"]).is_file())


def test_there_is_an_example_for_every_use():
    names = {p.stem for p in WORKFLOWS}
    assert names == {"kandinsky21_text_to_image", "kandinsky22_text_to_image", "kandinsky22_image_to_image",
                     "kandinsky22_inpainting", "kandinsky22_image_mixing", "kandinsky22_interpolation_animation",
                     "kandinsky22_emb2emb", "kandinsky22_depth_text_to_image", "kandinsky22_depth_image_to_image",
                     "kandinsky22_ksampler", "kandinsky22_lora", "kandinsky3_text_to_image",
                     "kandinsky3_image_to_image", "kandinsky3_ksampler", "kandinsky31_text_to_image",
                     "kandinsky31_flash", "kandinsky3_inpainting"}


def test_every_node_has_help_served_to_the_frontend(comfy):
    ours = {name: info for name, info in comfy.object_info().items() if info["python_module"].startswith("custom_nodes.")}
    assert len(ours) == 23
    for name, info in ours.items():  # the URL the frontend's node help panel fetches for a custom node
        text = urllib.request.urlopen(f"{comfy.url}/extensions/comfyui-kandinsky2/docs/{name}.md").read().decode()
        assert text.startswith(f"# {info['display_name']}\n"), name
        assert "## Input" in text, name


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_example_metadata(path):
    workflow = load_workflow(path)
    text = path.read_text()
    assert not re.search(r'"(/|[A-Za-z]:\\\\)', text), "absolute path in the workflow"
    thumbnail = path.with_suffix(".jpg")
    assert thumbnail.is_file() and thumbnail.stat().st_size < 150_000
    chosen = {n["widgets_values"][0] for n in workflow["nodes"] if n["type"] in LOADER_WIDGETS}
    notes = " ".join(str(v) for n in workflow["nodes"] if n["type"] in VIRTUAL for v in n.get("widgets_values", []))
    listed = set()
    for model in workflow["models"]:
        folder = next((c for c in chosen if model["name"].startswith(c)), None)
        assert folder, f"{model['name']} is in none of the folders the loaders pick: {chosen}"
        assert folder not in listed, f"two models entries for {folder}"
        listed.add(folder)
        assert model["directory"] == "kandinsky"
        assert model["name"].endswith(".safetensors"), "the missing-models dialog offers only .safetensors"
    # A checkpoint published only as .bin or .pt cannot be in `models`: the workflow's note says where to get it.
    unlisted = [folder for folder in chosen - listed if folder not in notes]
    assert not unlisted, f"checkpoint folders neither in `models` nor in a note: {unlisted}"
    for model in workflow["models"]:
        folder = next(c for c in chosen if model["name"].startswith(c))
        repo = "Intel/dpt-hybrid-midas" if folder.startswith("depth/") else f"kandinsky-community/{folder.rstrip('/')}"
        assert model["url"] == f"https://huggingface.co/{repo}/resolve/main/{model['name'].removeprefix(folder)}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_example_runs_in_the_frontend(frontend, comfy, path):
    workflow = load_workflow(path)
    shown = frontend.load(workflow, path.name)
    assert shown["nodes"] == [], "missing nodes dialog"
    missing = missing_on_server(comfy, workflow)
    assert set(shown["models"]) <= set(missing), "the frontend reports a checkpoint the server has"
    unlisted = sorted(set(missing) - set(shown["models"]))
    assert not unlisted or shown["modelsBy"] == "widgets", f"the missing models dialog leaves out {unlisted}"
    if shown["models"]:
        frontend.screenshot(f"{path.stem}-missing-models")
    frontend.close_dialogs()
    assert frontend.widget_errors(workflow) == []

    make_fast(frontend, workflow)
    assert frontend.bad_combos() == []
    prompt = frontend.api_prompt()
    runnable = {str(n["id"]): n["type"] for n in workflow["nodes"] if n["type"] not in VIRTUAL}
    assert {i: node["class_type"] for i, node in prompt.items()} == runnable
    for (target, name), source in links_by_input(workflow).items():
        assert prompt[target]["inputs"][name] == source

    _, history = frontend.queue()
    errors = [data.get("exception_message") for kind, data in history["status"]["messages"] if kind == "execution_error"]
    assert history["status"]["status_str"] == "success", errors
    outputs = {i for i, out in history["outputs"].items() if out.get("images")}
    assert outputs == {i for i, t in runnable.items() if t in OUTPUT_NODES}
    frontend.wait_for_images(outputs)
    frontend.screenshot(path.stem)
    assert frontend.errors == [], "\n".join(frontend.errors)
    if unlisted:  # the workflow runs; what is left is a gap of newer frontends, reported instead of hidden
        pytest.xfail(f"this frontend lists missing models only for widgets holding a model file name; the loaders "
                     f"pick checkpoint folders, so {unlisted} go unlisted until Run (where ComfyUI 0.30.0 refuses the "
                     "value, naming the loader and its input)")


LINK_COLORS = {"KANDINSKY2_PRIOR": "#C08AFF", "KANDINSKY2_MOVQ": "#FF8A8A", "KANDINSKY2_DEPTH_MODEL": "#7FD4C1"}
COLORS_NOW = """(types) => types.map(t => [LGraphCanvas.link_type_colors[t], app.canvas.default_connection_color_byType[t]])"""
SHOWN_SLOTS = """() => {
  const node = app.graph.nodes.find(n => n.type === "Kandinsky2Interpolate");
  return [1, 2, 3, 4].filter(i => node.widgets.some(w => w.name === `text_${i}` && !w.hidden));
}"""
NODE_HEIGHT = """() => app.graph.nodes.find(n => n.type === "Kandinsky2Interpolate").size[1]"""


def test_link_types_have_their_colours_in_every_palette(frontend):
    frontend.load(load_workflow(EXAMPLES / "kandinsky22_depth_text_to_image.json"), "colours")
    frontend.close_dialogs()
    expected = [[color, color] for color in LINK_COLORS.values()]
    assert frontend.evaluate(COLORS_NOW, list(LINK_COLORS)) == expected
    for palette in ("light", "dark"):  # applying a palette resets every type's colour
        frontend.evaluate("(p) => app.extensionManager.setting.set('Comfy.ColorPalette', p)", palette)
        frontend.page.wait_for_timeout(200)
        assert frontend.evaluate(COLORS_NOW, list(LINK_COLORS)) == expected, palette
    frontend.screenshot("extension-link-colours")
    assert frontend.errors == [], "\n".join(frontend.errors)


def test_interpolate_shows_the_slots_in_use_and_one_more(frontend):
    frontend.load(load_workflow(EXAMPLES / "kandinsky22_image_mixing.json"), "rows")

    def textarea(i):
        return frontend.page.locator(f"textarea[placeholder='text_{i}']")

    assert frontend.evaluate(SHOWN_SLOTS) == [1, 2, 3]  # two weighted slots and a spare one
    assert textarea(3).is_visible() and not textarea(4).is_visible()
    height = frontend.evaluate(NODE_HEIGHT)

    textarea(3).fill("a red balloon")  # using the spare slot adds the next one
    assert frontend.evaluate(SHOWN_SLOTS) == [1, 2, 3, 4]
    assert textarea(4).is_visible()
    assert frontend.evaluate(NODE_HEIGHT) > height
    frontend.screenshot("extension-interpolate-rows")

    textarea(3).fill("")  # emptied again (weight 0): the last row goes away
    assert frontend.evaluate(SHOWN_SLOTS) == [1, 2, 3]
    textarea(2).fill("")
    frontend.set_widget("Kandinsky2Interpolate", "weight_2", 0.0)  # slot 2 unused: it is the spare, 3 goes
    assert frontend.evaluate(SHOWN_SLOTS) == [1, 2]
    frontend.evaluate("""() => {
      const [image] = app.graph.nodes.filter(n => n.type === "LoadImage");
      const mix = app.graph.nodes.find(n => n.type === "Kandinsky2Interpolate");
      image.connect(0, mix, mix.inputs.findIndex(i => i.name === "image_4"));
    }""")
    assert frontend.evaluate(SHOWN_SLOTS) == [1, 2, 4]  # a linked image makes slot 4 in use

    inputs = next(n for n in frontend.api_prompt().values() if n["class_type"] == "Kandinsky2Interpolate")["inputs"]
    assert (inputs["text_3"], inputs["weight_3"], inputs["weight_2"]) == ("", 0.0, 0.0)  # hidden rows are sent too
    assert inputs["image_4"] == inputs["image_1"]
    assert frontend.errors == [], "\n".join(frontend.errors)
