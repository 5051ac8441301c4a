"""The ComfyUI layer: node schemas and ComfyUI types over kandinsky_core; no model math here."""
from comfy_api.latest import ComfyExtension

from . import lora, saving
from .common import comfy_compat, movq_nodes, paths
from .kandinsky2 import decoder_nodes, image_nodes, loaders, prior_nodes
from .kandinsky3 import nodes as kandinsky3_nodes


class KandinskyExtension(ComfyExtension):
    """Registers every node of the pack."""

    async def get_node_list(self):
        loader, encode, decode = movq_nodes.NODES  # in the menu order the pack has always had
        return [*loaders.NODES, loader, *prior_nodes.NODES, encode, decode, *image_nodes.NODES, *decoder_nodes.NODES,
                *lora.NODES, *kandinsky3_nodes.NODES, *saving.NODES]


async def comfy_entrypoint():
    """ComfyUI's V3 entry point."""
    paths.register()
    lora.install()
    comfy_compat.use_comfy_attention()
    return KandinskyExtension()
