"""Random Kandinsky 2.2 LoRA state dicts in the published namings, made from a model's weight shapes, for the tests."""
import torch
from safetensors.torch import save_file

from kandinsky_core.lora import target_kind

# Example-workflow LoRA names; conftest writes tiny files under them into the test server's models/loras.
DECODER_LORA = "kandinsky22-decoder-lora.safetensors"
PRIOR_LORA = "kandinsky22-prior-lora.safetensors"


def lora_names(target, naming):
    """(up key, down key, alpha key) of a layer in `naming`: 'attn-procs' (diffusers 0.22-0.25) or 'peft'."""
    if naming == "peft":
        return f"{target}.lora_B.weight", f"{target}.lora_A.weight", f"{target}.alpha"
    module, _, projection = target.removesuffix(".0").rpartition(".")
    base = f"{module}.processor.{projection}"
    return f"{base}_lora.up.weight", f"{base}_lora.down.weight", f"{base}.alpha"


def random_lora(shapes, kind, naming="attn-procs", rank=2, alpha=None, seed=0, prefix="", only=None):
    """A LoRA over every `kind` attention projection in `shapes` ({weight key: shape}); `only` filters targets by
    substring. Up is random too (trainers start it at zero), so the LoRA changes the output."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in sorted(shapes.items()):
        target = key.removesuffix(".weight")
        if key == target or target_kind(target) != kind or (only and only not in target):
            continue
        up, down, alpha_key = lora_names(target, naming)
        sd[prefix + up] = 0.2 * torch.randn(shape[0], rank, generator=g)
        sd[prefix + down] = 0.2 * torch.randn(rank, shape[1], generator=g)
        if alpha is not None:
            sd[prefix + alpha_key] = torch.tensor(float(alpha))
    return sd


def write_lora(path, state_dict):
    """Save as safetensors with diffusers' metadata."""
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path), metadata={"format": "pt"})
    return path


def model_shapes(kandinsky_root, folder, part):
    """{weight key: shape} of a tiny checkpoint's part (e.g. 'kandinsky-2-2-decoder', 'unet') under `kandinsky_root`."""
    from kandinsky_core import weights

    return weights.read_shapes(weights.weights_path(str(kandinsky_root / folder / part)))


def write_example_loras(folder, kandinsky_root):
    """The example workflow's two LoRAs (attn-procs naming), sized for the tiny 2.2 decoder and prior."""
    folder.mkdir(parents=True, exist_ok=True)
    decoder = model_shapes(kandinsky_root, "kandinsky-2-2-decoder", "unet")
    write_lora(folder / DECODER_LORA, random_lora(decoder, "decoder", seed=10))
    write_lora(folder / PRIOR_LORA, random_lora(model_shapes(kandinsky_root, "kandinsky-2-2-prior", "prior"), "prior",
                                                seed=11))
