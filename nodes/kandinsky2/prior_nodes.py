"""Prior nodes: CLIP image embeddings from text, images and mixes of both, as CONDITIONING for the decoder."""
import comfy.model_management as mm
import torch
from comfy_api.latest import io

from ...kandinsky_core.errors import KandinskyError
from ...kandinsky_core.images import clip_image_inputs
from ...kandinsky_core.kandinsky2 import mixing
from ...kandinsky_core.kandinsky2 import prior_pipeline as P
from ..common import progress, types

CATEGORY = f"{types.CATEGORY}/prior"
SLOTS = 4


def _conditioning(emb, version, prompt=""):
    """(B, D) image embeddings → the pack's CONDITIONING: one (B, 1, D) entry tagged with version and prompt."""
    return [[emb.unsqueeze(1).to(mm.intermediate_device()), {"kandinsky_version": version, "kandinsky_prompt": prompt}]]


def _embedding(cond, name):
    """The (B, D) image embeddings inside a Kandinsky CONDITIONING, refusing any other conditioning."""
    if len(cond) != 1 or cond[0][0].ndim != 3 or cond[0][0].shape[1] != 1:
        shapes = [tuple(t.shape) for t, _ in cond]
        raise KandinskyError(f"{name} holds conditioning of shape(s) {shapes}, not a Kandinsky image embedding; "
                             "connect the positive or negative output of a Kandinsky prior node.")
    return cond[0][0][:, 0]


def _clip_pixels(models, image):
    """IMAGE (B, H, W, C) in [0, 1] → the prior's CLIP pixel values (resize, center crop, normalize)."""
    return clip_image_inputs(image[..., :3].movedim(-1, 1), models.image_processor)


def _sampling(cls, seed, steps, guidance_scale):
    """Keyword arguments of every core prior sampler: CPU-seeded noise and the progress / Cancel callback."""
    return dict(steps=steps, guidance_scale=guidance_scale, generator=torch.Generator().manual_seed(seed),
                callback=progress.step_callback(steps, cls.hidden.unique_id))


def _slot_item(models, slots, i):
    """Slot i's content: its embedding, else its image, else its text; None when the slot is empty."""
    if slots.get(f"embedding_{i}") is not None:
        return _embedding(slots[f"embedding_{i}"], f"embedding_{i}")
    if slots.get(f"image_{i}") is not None:
        return _clip_pixels(models, slots[f"image_{i}"])
    return slots[f"text_{i}"] if slots[f"text_{i}"].strip() else None


def _slot_items(models, slots):
    """Interpolate's counted slots (non-zero weight, some content) as the core's (items, weights)."""
    items, weights = [], []
    for i in range(1, SLOTS + 1):
        item = _slot_item(models, slots, i) if slots[f"weight_{i}"] != 0 else None
        if item is not None:
            items.append(item)
            weights.append(slots[f"weight_{i}"])
    if not items:
        raise KandinskyError("Kandinsky Interpolate has nothing to mix: give at least one slot a non-zero weight and a "
                             "text, an image or an embedding.")
    batches = {len(item) for item in items if not isinstance(item, str)} - {1}
    if len(batches) > 1:
        raise KandinskyError(f"Kandinsky Interpolate got image/embedding batches of sizes {sorted(batches)}; use "
                             "batches of one size (a batch of 1 is shared by all).")
    return items, weights


def _prior_input():
    return types.Prior.Input("prior", tooltip="A Kandinsky 2.1 or 2.2 prior from Kandinsky Prior Loader.")


def _image_input(name="image", optional=False):
    return io.Image.Input(name, optional=optional, tooltip="Image(s) to embed with the prior's CLIP image encoder "
                                                           "(center-cropped to a square).")


def _prompt_inputs():
    return [io.String.Input("prompt", multiline=True, tooltip="What the image should show."),
            io.String.Input("negative_prompt", multiline=True, default="",
                            tooltip="What to steer away from. Empty: the embedding of a blank image is the negative.")]


def _sampling_inputs():
    return [io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                         tooltip="Seed of the prior's noise (CPU generator: the same on every device)."),
            io.Int.Input("steps", default=25, min=2, max=1000, tooltip="Prior denoising steps."),
            io.Float.Input("guidance_scale", default=4.0, min=1.0, max=30.0, step=0.1,
                           tooltip="How strongly the prior follows the text; 1 turns guidance off.")]


def _outputs(positive_tooltip):
    return [io.Conditioning.Output(display_name="positive", tooltip=positive_tooltip),
            io.Conditioning.Output(display_name="negative", tooltip="Negative image embedding, for the sampler's "
                                                                    "negative input.")]


class PriorEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="Kandinsky2PriorEncode", display_name="Kandinsky Prior Encode", category=CATEGORY,
            description="Turns a prompt into CLIP image embeddings with the prior, the decoder's conditioning.",
            inputs=[_prior_input(), *_prompt_inputs(), *_sampling_inputs(),
                    io.Int.Input("batch_size", default=1, min=1, max=64,
                                 tooltip="Embeddings to sample (one image each); match the latent batch size.")],
            outputs=_outputs("Image embeddings of the prompt, for the sampler's positive input."),
            hidden=[io.Hidden.unique_id])

    @classmethod
    def execute(cls, prior, prompt, negative_prompt, seed, steps, guidance_scale, batch_size):
        run = _sampling(cls, seed, steps, guidance_scale)
        positive, negative = P.sample_prior(prior.ready(), prompt, negative_prompt or None,
                                            num_images_per_prompt=batch_size, **run)
        return io.NodeOutput(_conditioning(positive, prior.version, prompt),
                             _conditioning(negative, prior.version, negative_prompt))


class ImageEmbedding(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="Kandinsky2ImageEmbedding", display_name="Kandinsky Image Embedding", category=CATEGORY,
            description="Embeds images with the prior's CLIP image encoder, for image variations without a prompt.",
            inputs=[_prior_input(), _image_input()],
            outputs=_outputs("CLIP embeddings of the images (one per image), for the sampler's positive input."))

    @classmethod
    def execute(cls, prior, image):
        models = prior.ready()
        positive = P.embed_images(models, _clip_pixels(models, image))
        negative = P.zero_image_embeds(models, positive.shape[0])
        return io.NodeOutput(_conditioning(positive, prior.version), _conditioning(negative, prior.version))


class Emb2Emb(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="Kandinsky2Emb2Emb", display_name="Kandinsky Emb2Emb", category=CATEGORY,
            description="Moves an image's CLIP embedding towards a prompt: the prior denoises the noised image "
                        "embedding.",
            inputs=[_prior_input(), _image_input(), *_prompt_inputs(),
                    io.Float.Input("strength", default=0.3, min=0.01, max=1.0, step=0.01,
                                   tooltip="How far from the image to go: the share of the steps that are run "
                                           "(strength × steps must be at least 1)."),
                    *_sampling_inputs()],
            outputs=_outputs("Image embeddings between the image and the prompt (one per image)."),
            hidden=[io.Hidden.unique_id])

    @classmethod
    def execute(cls, prior, image, prompt, negative_prompt, strength, seed, steps, guidance_scale):
        models = prior.ready()
        prompts = [prompt] * image.shape[0]  # one embedding per image
        run = _sampling(cls, seed, steps, guidance_scale)
        positive, negative = P.emb2emb(models, prompts, _clip_pixels(models, image), strength=strength,
                                       negative_prompt=negative_prompt or None, **run)
        return io.NodeOutput(_conditioning(positive, prior.version, prompt),
                             _conditioning(negative, prior.version, negative_prompt))


def _slot_inputs(i):
    return [io.String.Input(f"text_{i}", multiline=True, default="",
                            tooltip=f"Slot {i} text, sampled through the prior (used when the slot has no image or "
                                    "embedding)."),
            io.Float.Input(f"weight_{i}", default=0.5 if i <= 2 else 0.0, min=-10.0, max=10.0, step=0.01,
                           tooltip=f"Slot {i} weight; 0 leaves the slot out. Weights are used as given, not "
                                   "normalised."),
            _image_input(f"image_{i}", optional=True),
            io.Conditioning.Input(f"embedding_{i}", optional=True,
                                  tooltip=f"Slot {i} Kandinsky embedding (a prior node's output); wins over image "
                                          "and text.")]


class Interpolate(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="Kandinsky2Interpolate", display_name="Kandinsky Interpolate", category=CATEGORY,
            description="Mixes up to four texts, images and embeddings into one image embedding: their weighted sum.",
            inputs=[_prior_input(), *_sampling_inputs(), *[x for i in range(1, SLOTS + 1) for x in _slot_inputs(i)]],
            outputs=_outputs("The weighted sum of the slots' embeddings (decoder prompt: empty, as in diffusers)."),
            hidden=[io.Hidden.unique_id])

    @classmethod
    def execute(cls, prior, seed, steps, guidance_scale, **slots):
        models = prior.ready()
        items, weights = _slot_items(models, slots)
        positive, negative = P.interpolate(models, items, weights, **_sampling(cls, seed, steps, guidance_scale))
        return io.NodeOutput(_conditioning(positive, prior.version), _conditioning(negative, prior.version))


class InterpolateBatch(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="Kandinsky2InterpolateBatch", display_name="Kandinsky Interpolate Batch", category=CATEGORY,
            description="A batch of embeddings going from a to b, for animations: sample it with a latent batch of "
                        "`frames` images.",
            inputs=[io.Conditioning.Input("embedding_a", tooltip="First frame: one Kandinsky embedding (batch of 1)."),
                    io.Conditioning.Input("embedding_b",
                                          tooltip="Last frame: one Kandinsky embedding of the same version."),
                    io.Int.Input("frames", default=8, min=2, max=256,
                                 tooltip="Embeddings in the batch, both ends included."),
                    io.Combo.Input("mode", options=list(mixing.MODES), default="slerp",
                                   tooltip="linear blends the vectors; slerp turns the direction at constant angular "
                                           "speed and blends the lengths (unit vectors stay unit).")],
            outputs=[io.Conditioning.Output(display_name="positive",
                                            tooltip="`frames` embeddings from a to b. The 2.1 decoder prompt is the "
                                                    "inputs' prompt if they share it, else empty.")])

    @classmethod
    def execute(cls, embedding_a, embedding_b, frames, mode):
        a, b = _embedding(embedding_a, "embedding_a"), _embedding(embedding_b, "embedding_b")
        if a.shape[0] != 1 or b.shape[0] != 1:
            raise KandinskyError(f"Kandinsky Interpolate Batch needs one embedding at each end, got batches of "
                                 f"{a.shape[0]} and {b.shape[0]}; use batch_size 1 for the embeddings to connect.")
        info_a, info_b = embedding_a[0][1], embedding_b[0][1]
        prompt = info_a.get("kandinsky_prompt", "")
        prompt = prompt if prompt == info_b.get("kandinsky_prompt", "") else ""
        path = mixing.embedding_path(a[0], b[0], frames, mode)
        return io.NodeOutput(_conditioning(path, info_a.get("kandinsky_version"), prompt))


NODES = [PriorEncode, ImageEmbedding, Emb2Emb, Interpolate, InterpolateBatch]
