"""Kandinsky 3 (kandinsky-community/kandinsky-3): its UNet, Flan-UL2 T5 text encoder, tokenizer, pipelines and loaders.

Shared with 2.x and imported from the package root: attention, the timestep layers (`layers`), MoVQ (preset
`movq.MOVQ_K3`), schedulers (`schedulers.KANDINSKY_3_DDPM`), file loading, image helpers, errors.
"""
