"""The Kandinsky 3 nodes: the UNet as a MODEL, the T5 as a CLIP, the exact sampler."""
