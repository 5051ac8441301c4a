"""API-format prompts of the pack's workflows, built node by node, and the files the test server is given.

A test builds a `Graph`, adds nodes with `graph.add(class_type, **inputs)` and wires them with `node[i]` (a link to
output i), so each test reads like the workflow it runs.
"""
from dataclasses import dataclass

SIZE = 64  # input images and default latents: the smallest the tiny models take, keeping CPU runs short
INPUT_IMAGE = "kandinsky_input.png"  # SIZE x SIZE random RGB
INPAINT_IMAGE = "kandinsky_inpaint.png"  # the same RGB, transparent in the central square: LoadImage's mask is 1 there
SINGLE_UNET = "single/unet-22.safetensors"  # the tiny 2.2 decoder's UNet alone, config in the file's metadata
DEPTH_MODEL = "depth/dpt-tiny/"
ORIGINAL_WEIGHTS = "Kandinsky3.1/weights"  # ai-forever/Kandinsky3.1 weights/, tiny (kandinsky3/tiny_original.py)

PRIORS = {"2.1": "kandinsky-2-1-prior/", "2.2": "kandinsky-2-2-prior/"}
DECODERS = {"2.1": "kandinsky-2-1/", "2.2": "kandinsky-2-2-decoder/", "2.1-inpaint": "kandinsky-2-1-inpaint/",
            "2.2-inpaint": "kandinsky-2-2-decoder-inpaint/", "2.2-depth": "kandinsky-2-2-controlnet-depth/"}


@dataclass(frozen=True)
class Node:
    """A node in a Graph; `node[i]` is the link to its output i."""

    id: str

    def __getitem__(self, output):
        return [self.id, output]


class Graph:
    """An API-format prompt (the body of POST /prompt) under construction."""

    def __init__(self):
        self.prompt = {}

    def add(self, class_type, **inputs):
        """Append a node and return it."""
        node = Node(str(len(self.prompt) + 1))
        self.prompt[node.id] = {"class_type": class_type, "inputs": inputs}
        return node

    def prior(self, version="2.2"):
        """Kandinsky Prior Loader for the tiny prior of `version`."""
        return self.add("Kandinsky2PriorLoader", prior=PRIORS[version])

    def decoder(self, name="2.2", mode="exact"):
        """Kandinsky Decoder Loader for a tiny decoder (a DECODERS key) or any loader choice; outputs model, movq.
        mode exact (not the node's default, fast): these graphs are compared with kandinsky_core bit for bit."""
        return self.add("Kandinsky2DecoderLoader", decoder=DECODERS.get(name, name), mode=mode)

    def prior_encode(self, prior, prompt="a red cat", seed=0, steps=2, batch_size=1, negative_prompt="",
                     guidance_scale=4.0):
        """Kandinsky Prior Encode; outputs positive, negative."""
        return self.add("Kandinsky2PriorEncode", prior=prior[0], prompt=prompt, negative_prompt=negative_prompt,
                        seed=seed, steps=steps, guidance_scale=guidance_scale, batch_size=batch_size)

    def empty_latent(self, width=SIZE, height=SIZE, batch_size=1):
        """Core Empty Latent Image (4 channels at 1/8 size, as the MoVQ's)."""
        return self.add("EmptyLatentImage", width=width, height=height, batch_size=batch_size)

    def sampler(self, model, positive, negative, latent, seed=0, steps=2, guidance_scale=4.0, sampler="checkpoint",
                denoise=1.0, **extra):
        """Kandinsky Decoder Sampler; `model` is a Decoder Loader node, the rest are links (`extra`: more inputs)."""
        return self.add("Kandinsky2DecoderSampler", model=model[0], positive=positive, negative=negative,
                        latent_image=latent, seed=seed, steps=steps, guidance_scale=guidance_scale, sampler=sampler,
                        denoise=denoise, **extra)

    def load_image(self, name=INPUT_IMAGE):
        """Core Load Image from the server's input folder; outputs image, mask (1 where transparent)."""
        return self.add("LoadImage", image=name)

    def inpaint(self, cond, movq, image):
        """Kandinsky Inpaint Conditioning of a Load Image node (its alpha is the mask); outputs positive, negative,
        latent."""
        return self.add("Kandinsky2InpaintConditioning", positive=cond[0], negative=cond[1], movq=movq,
                        pixels=image[0], mask=image[1])

    def depth_map(self, image):
        """The tiny depth model's Kandinsky Depth Estimate of an IMAGE link."""
        model = self.add("Kandinsky2DepthModelLoader", depth_model=DEPTH_MODEL)
        return self.add("Kandinsky2DepthEstimate", depth_model=model[0], image=image)

    def depth_hint(self, cond, hint):
        """Kandinsky Apply Depth Hint with an IMAGE link; outputs positive, negative."""
        return self.add("Kandinsky2ApplyDepthHint", positive=cond[0], negative=cond[1], hint=hint)

    def decode(self, movq, samples, tile_size=0):
        """Kandinsky MoVQ Decode of a LATENT link with the MoVQ link `movq`."""
        return self.add("Kandinsky2MoVQDecode", movq=movq, samples=samples, tile_size=tile_size)

    def save(self, image, prefix):
        """Core Save Image (PNG in the output folder, listed in the prompt's history)."""
        return self.add("SaveImage", images=image, filename_prefix=prefix)

    def save_latent(self, samples, prefix):
        """Core Save Latent (a safetensors file under output/latents, listed in the prompt's history)."""
        return self.add("SaveLatent", samples=samples, filename_prefix=f"latents/{prefix}")

    def decode_and_save(self, movq, samples, prefix):
        """MoVQ Decode then Save Image; returns the Save Image node."""
        return self.save(self.decode(movq, samples)[0], prefix)


def interpolate_slots(**slots):
    """Kandinsky Interpolate's four slot inputs: the given `text_i`/`weight_i`/`image_i`/`embedding_i`, the rest
    empty with weight 0 (API prompts must carry every required input)."""
    inputs = {f"{key}_{i}": value for i in range(1, 5) for key, value in (("text", ""), ("weight", 0.0))}
    return {**inputs, **slots}
