"""What the inpainting nodes of both families share: conditioning dicts that carry the inpainting inputs."""


def with_keys(cond, **keys):
    """A copy of a CONDITIONING list whose dicts carry `keys` too; the input is left as it was."""
    return [[t, {**d, **keys}] for t, d in cond]
