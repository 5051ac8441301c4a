"""The Kandinsky 2.1 / 2.2 nodes: prior, decoder MODEL and sampler, inpainting and depth inputs."""
