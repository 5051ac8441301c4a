"""The ComfyUI layer: node schemas and ComfyUI types over kandinsky_core; no model math here."""
from comfy_api.latest import ComfyExtension

from . import decoder_nodes, loaders, paths


class KandinskyExtension(ComfyExtension):
    """Registers every node of the pack."""

    async def get_node_list(self):
        return [*loaders.NODES, *decoder_nodes.NODES]


async def comfy_entrypoint():
    """ComfyUI's V3 entry point."""
    paths.register()
    return KandinskyExtension()
