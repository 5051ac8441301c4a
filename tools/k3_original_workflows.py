"""Write the Kandinsky 3.1, 3.1 Flash and Kandinsky 3 inpainting example workflows in the UI format the frontend
saves (python tools/k3_original_workflows.py). Their thumbnails are screenshots of each opened in the frontend."""
import json
import pathlib
import uuid

OUT = pathlib.Path(__file__).resolve().parents[1] / "example_workflows"
W = "Kandinsky3.1/weights"
T5_MODEL = {"name": "kandinsky-3/text_encoder/model.fp16-00001-of-00005.safetensors",
            "url": "https://huggingface.co/kandinsky-community/kandinsky-3/resolve/main/text_encoder/"
                   "model.fp16-00001-of-00005.safetensors", "directory": "kandinsky"}
# Each node's inputs in schema order as (name, type): a type ending in * is a link, in ? an optional link, anything
# else a widget; then its outputs.
SPECS = {
    "Kandinsky3OriginalUNetLoader": ([("unet", "COMBO"), ("projection", "COMBO"), ("weight_dtype", "COMBO"), ("mode", "COMBO")], [("model", "MODEL")]),
    "Kandinsky3T5Loader": ([("text_encoder", "COMBO"), ("weight_dtype", "COMBO")], [("clip", "CLIP")]),
    "Kandinsky2MoVQLoader": ([("movq", "COMBO"), ("mode", "COMBO")], [("movq", "KANDINSKY2_MOVQ")]),
    "CLIPTextEncode": ([("clip", "CLIP*"), ("text", "STRING")], [("CONDITIONING", "CONDITIONING")]),
    "ConditioningZeroOut": ([("conditioning", "CONDITIONING*")], [("CONDITIONING", "CONDITIONING")]),
    "EmptyLatentImage": ([("width", "INT"), ("height", "INT"), ("batch_size", "INT")], [("LATENT", "LATENT")]),
    "Kandinsky3Sampler": ([("model", "MODEL*"), ("positive", "CONDITIONING*"), ("negative", "CONDITIONING?"),
                           ("latent_image", "LATENT*"), ("seed", "INT"), ("steps", "INT"), ("cfg", "FLOAT"),
                           ("sampler", "COMBO"), ("denoise", "FLOAT")], [("LATENT", "LATENT")]),
    "Kandinsky2MoVQDecode": ([("movq", "KANDINSKY2_MOVQ*"), ("samples", "LATENT*"), ("tile_size", "INT")],
                             [("image", "IMAGE")]),
    "SaveImage": ([("images", "IMAGE*"), ("filename_prefix", "STRING")], []),
    "KSamplerSelect": ([("sampler_name", "COMBO")], [("SAMPLER", "SAMPLER")]),
    "Kandinsky3FlashSigmas": ([("model", "MODEL*")], [("SIGMAS", "SIGMAS")]),
    "SamplerCustom": ([("model", "MODEL*"), ("positive", "CONDITIONING*"), ("negative", "CONDITIONING*"),
                       ("sampler", "SAMPLER*"), ("sigmas", "SIGMAS*"), ("latent_image", "LATENT*"), ("add_noise", "BOOLEAN"),
                       ("noise_seed", "INT"), ("cfg", "FLOAT")], [("output", "LATENT"), ("denoised_output", "LATENT")]),
    "LoadImage": ([("image", "COMBO"), ("upload", "IMAGEUPLOAD")], [("IMAGE", "IMAGE"), ("MASK", "MASK")]),
    "Kandinsky3InpaintConditioning": ([("positive", "CONDITIONING*"), ("negative", "CONDITIONING*"),
                                       ("movq", "KANDINSKY2_MOVQ*"), ("pixels", "IMAGE*"), ("mask", "MASK*"),
                                       ("grow_mask_by", "INT"), ("paste_back", "BOOLEAN")],
                                      [("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent", "LATENT")]),
}
LOCAL = {"upload": "choose file to upload"}


class Builder:
    def __init__(self):
        self.nodes, self.links = [], []

    def add(self, kind, pos, widgets=(), size=(320, 100), **links):
        node_id = len(self.nodes) + 1
        inputs = []
        for name, typ in SPECS[kind][0]:
            if typ.endswith(("*", "?")):
                entry = {"localized_name": name, "name": name, "type": typ[:-1], "link": None}
                if typ.endswith("?"):
                    entry["shape"] = 7
            else:
                entry = {"localized_name": LOCAL.get(name, name), "name": name, "type": typ, "widget": {"name": name},
                         "link": None}
            inputs.append(entry)
        node = {"id": node_id, "type": kind, "pos": list(pos), "size": list(size), "flags": {}, "order": node_id - 1,
                "mode": 0, "inputs": inputs,
                "outputs": [{"localized_name": n, "name": n, "type": t, "links": []} for n, t in SPECS[kind][1]],
                "properties": {"Node name for S&R": kind} if kind != "SaveImage" else {}, "widgets_values": list(widgets)}
        self.nodes.append(node)
        for name, (source, slot) in links.items():
            self.link(source, slot, node_id, name)
        return node_id

    def link(self, source, slot, target, name):
        link_id = len(self.links) + 1
        src, dst = self.nodes[source - 1], self.nodes[target - 1]
        index = next(i for i, inp in enumerate(dst["inputs"]) if inp["name"] == name)
        typ = src["outputs"][slot]["type"]
        self.links.append([link_id, source, slot, target, index, typ])
        src["outputs"][slot]["links"].append(link_id)
        dst["inputs"][index]["link"] = link_id

    def note(self, pos, text, size=(460, 150)):
        node_id = len(self.nodes) + 1
        self.nodes.append({"id": node_id, "type": "MarkdownNote", "pos": list(pos), "size": list(size), "flags": {},
                           "order": node_id - 1, "mode": 0, "inputs": [], "outputs": [], "properties": {},
                           "widgets_values": [text], "color": "#432", "bgcolor": "#653"})

    def save(self, name, models):
        for n in self.nodes:
            for out in n["outputs"]:
                out["links"] = out["links"] or None
        workflow = {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, name)), "revision": 0, "last_node_id": len(self.nodes),
                    "last_link_id": len(self.links), "nodes": self.nodes, "links": self.links, "groups": [],
                    "config": {}, "extra": {}, "version": 0.4, "models": models}
        (OUT / f"{name}.json").write_text(json.dumps(workflow, indent=2, ensure_ascii=False) + "\n")


def files_note(unet):
    return (f"**Models**: `models/kandinsky/{W}/{unet}` and `models/kandinsky/{W}/movq.pt`: " + FILES_NOTE)


FILES_NOTE = (f"the original files of `ai-forever/Kandinsky3.1` in `ComfyUI/models/kandinsky/{W}/` "
              "(`hf download ai-forever/Kandinsky3.1 --include \"weights/*.pt\" --local-dir models/kandinsky/"
              "Kandinsky3.1`), as published: fp32 `.pt` files (12.2 GB per UNet, movq.pt 1.1 GB), which ComfyUI's "
              "missing-models dialog cannot fetch. The T5 is the same model as kandinsky-3's fp16 `text_encoder/` "
              "(`models/kandinsky/kandinsky-3/`, 21.7 GB; 3.1's own `weights/flan_ul2_encoder/` works too, 34.9 GB of "
              "fp32 `.bin`). **Memory**: `fp8_e4m3fn` stores the UNet in 3 GB and the T5 in 8.7 GB.")


def loaders(b, unet):
    model = b.add("Kandinsky3OriginalUNetLoader", (40, 60), [f"{W}/{unet}", "auto (the published pairing)", "fp8_e4m3fn", "fast"],
                  (340, 106))
    clip = b.add("Kandinsky3T5Loader", (40, 196), ["kandinsky-3/", "fp8_e4m3fn"], (340, 82))
    movq = b.add("Kandinsky2MoVQLoader", (40, 308), [f"{W}/movq.pt", "fast"], (340, 58))
    return model, clip, movq


def text_to_image():
    b = Builder()
    model, clip, movq = loaders(b, "kandinsky3.pt")
    text = b.add("CLIPTextEncode", (420, 60), ["a red cat sitting on a windowsill, oil painting, high quality"],
                 (320, 130), clip=(clip, 0))
    latent = b.add("EmptyLatentImage", (420, 220), [1024, 1024, 1], (320, 106))
    sample = b.add("Kandinsky3Sampler", (800, 60), [0, "randomize", 50, 4.0, "checkpoint", 1.0], (320, 262),
                   model=(model, 0), positive=(text, 0), latent_image=(latent, 0))
    decode = b.add("Kandinsky2MoVQDecode", (1160, 60), [0], (320, 78), movq=(movq, 0), samples=(sample, 0))
    b.add("SaveImage", (1160, 168), ["kandinsky31"], (320, 58), images=(decode, 0))
    b.note((40, 500), files_note("kandinsky3.pt"))
    b.note((540, 500), "**Kandinsky 3.1** as the original code samples it: the Kandinsky 3 Sampler's `checkpoint` is "
                       "the 3.1 sampler (DDIM η 1, dynamic thresholding, 50 steps), **cfg 4.0** = its guidance 3 + 1. "
                       "`negative` unconnected: the checkpoint's null embedding, as the original (connect a CLIP Text "
                       "Encode for a negative prompt). KSampler works with this MODEL too (negative: "
                       "ConditioningZeroOut of the positive). Sizes: multiples of 64 px.")
    b.save("kandinsky31_text_to_image", [T5_MODEL])


def flash():
    b = Builder()
    model, clip, movq = loaders(b, "kandinsky3_flash.pt")
    text = b.add("CLIPTextEncode", (420, 60), ["a red cat sitting on a windowsill, oil painting, high quality"],
                 (320, 130), clip=(clip, 0))
    zero = b.add("ConditioningZeroOut", (420, 220), [], (320, 26), conditioning=(text, 0))
    latent = b.add("EmptyLatentImage", (420, 300), [1024, 1024, 1], (320, 106))
    select = b.add("KSamplerSelect", (420, 446), ["lcm"], (320, 58))
    sigmas = b.add("Kandinsky3FlashSigmas", (420, 540), [], (320, 46), model=(model, 0))
    sample = b.add("SamplerCustom", (800, 60), [True, 0, "randomize", 1.0], (320, 230), model=(model, 0),
                   positive=(text, 0), negative=(zero, 0), sampler=(select, 0), sigmas=(sigmas, 0),
                   latent_image=(latent, 0))
    decode = b.add("Kandinsky2MoVQDecode", (1160, 60), [0], (320, 78), movq=(movq, 0), samples=(sample, 0))
    b.add("SaveImage", (1160, 168), ["kandinsky31_flash"], (320, 58), images=(decode, 0))
    b.note((40, 640), files_note("kandinsky3_flash.pt"))
    b.note((540, 640), "**Kandinsky 3.1 Flash**: 4 UNet calls, no guidance. SamplerCustom with the **lcm** sampler, "
                       "**Kandinsky 3.1 Flash Sigmas** (timesteps 979, 729, 479, 229) and **cfg 1** is Flash's loop in "
                       "ComfyUI's own sampling (the negative is not used at cfg 1). The Kandinsky 3 Sampler with "
                       "`sampler: flash` gives the original code's image for a seed exactly.")
    b.save("kandinsky31_flash", [T5_MODEL])


def inpainting():
    b = Builder()
    model, clip, movq = loaders(b, "kandinsky3_inpainting.pt")
    text = b.add("CLIPTextEncode", (420, 60), ["a vase of sunflowers on the table"], (320, 130), clip=(clip, 0))
    zero = b.add("ConditioningZeroOut", (420, 220), [], (320, 26), conditioning=(text, 0))
    image = b.add("LoadImage", (420, 300), ["example.png", "image"], (340, 314))
    cond = b.add("Kandinsky3InpaintConditioning", (800, 60), [0, False], (320, 182), positive=(text, 0), negative=(zero, 0),
                 movq=(movq, 0), pixels=(image, 0), mask=(image, 1))
    sample = b.add("Kandinsky3Sampler", (1160, 60), [0, "randomize", 50, 5.0, "checkpoint", 1.0], (320, 262),
                   model=(model, 0), positive=(cond, 0), negative=(cond, 1), latent_image=(cond, 2))
    decode = b.add("Kandinsky2MoVQDecode", (1520, 60), [0], (320, 78), movq=(movq, 0), samples=(sample, 0))
    b.add("SaveImage", (1520, 168), ["kandinsky3_inpaint"], (320, 58), images=(decode, 0))
    b.note((40, 660), files_note("kandinsky3_inpainting.pt"))
    b.note((540, 660), "**Kandinsky 3 inpainting**: paint the mask in Load Image's mask editor (white = repaint). "
                       "Kandinsky 3 Inpaint Conditioning prepares image and mask as the original pipeline (sides "
                       "cropped to multiples of 64); **cfg 5.0** = the original's guidance 4. The image is regenerated "
                       "around the repainted part, as in the original; turn **paste_back** on to keep the other "
                       "pixels exactly (MoVQ Decode puts the input back there). Works with the 3.0 and 3.1 "
                       "kandinsky3_inpainting.pt.")
    b.save("kandinsky3_inpainting", [T5_MODEL])


text_to_image()
flash()
inpainting()
