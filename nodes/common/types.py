"""The pack's own link types; prefixed so they never meet another pack's objects."""
from comfy_api.latest import io

Prior = io.Custom("KANDINSKY2_PRIOR")
MoVQ = io.Custom("KANDINSKY2_MOVQ")
DepthModel = io.Custom("KANDINSKY2_DEPTH_MODEL")

CATEGORY = "Kandinsky 2"
