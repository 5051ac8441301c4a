"""The ComfyUI layer: node schemas and ComfyUI types over kandinsky_core; no model math here."""
from comfy_api.latest import ComfyExtension

from . import comfy_compat, decoder_nodes, image_nodes, k3_nodes, loaders, lora, paths, prior_nodes


class KandinskyExtension(ComfyExtension):
    """Registers every node of the pack."""

    async def get_node_list(self):
        return [*loaders.NODES, *prior_nodes.NODES, *image_nodes.NODES, *decoder_nodes.NODES, *lora.NODES,
                *k3_nodes.NODES]


async def comfy_entrypoint():
    """ComfyUI's V3 entry point."""
    paths.register()
    lora.install()
    comfy_compat.use_comfy_attention()
    return KandinskyExtension()
