"""Kandinsky 2.2 and Kandinsky 3 UNet LoRAs: read both file namings, tell what a file is for, merge it into a model
and take it out again.

Files come from diffusers' Kandinsky 2.2 example trainers (diffusers 0.22-0.25:
diffusers/examples/kandinsky2_2/text_to_image/train_text_to_image_lora_{decoder,prior}.py) and from trainers that
copied their format; the same low-rank pairs appear under two namings:
- attn-procs: `<module>.processor.to_q_lora.down.weight` / `.up.weight` (to_q, to_k, to_v, to_out; decoder files may
  add add_k_proj / add_v_proj);
- PEFT, as current diffusers converts them: `<module>.to_q.lora_A.weight` (down) / `.lora_B.weight` (up) with `to_out.0`,
  optionally prefixed `unet.` / `prior.`, optionally with `<name>.alpha`.
`<module>` is one of the decoder UNet's 22 attention modules or one of the prior's 20 `transformer_blocks.N.attn1`.
Kandinsky 3 has no trainer of its own, but its diffusers pipelines load LoRAs with the Stable Diffusion loader, so the
files diffusers' generic LoRA trainers write for it use the same two namings over the K3 UNet's attention modules
(`down_blocks.N.attentions.M.attention`, `up_blocks...`, `add_time_condition.attention`), `unet.` prefixed. The T5 text
encoder takes no LoRA here: a file with T5 layers is refused rather than half applied.
The merge is ComfyUI's: `W + strength · (alpha / rank if alpha is given else 1) · up @ down`, summed in float32.
"""
import os
import re
import weakref
from dataclasses import dataclass, field

import torch

from .errors import KandinskyError
from .weights import iter_tensors

# What each kind of LoRA patches: module paths (as in our state dicts, which keep diffusers' names) and projections.
TARGETS = {
    "decoder": (re.compile(r"(?:down_blocks\.\d+\.attentions|mid_block\.attentions|up_blocks\.\d+\.attentions)\.\d+"),
                ("to_q", "to_k", "to_v", "to_out.0", "add_k_proj", "add_v_proj")),
    "prior": (re.compile(r"transformer_blocks\.\d+\.attn1"), ("to_q", "to_k", "to_v", "to_out.0")),
    "kandinsky3": (re.compile(r"(?:add_time_condition|(?:down|up)_blocks\.\d+\.attentions\.\d+)\.attention"),
                   ("to_q", "to_k", "to_v", "to_out.0")),
}
KIND_NAMES = {"decoder": "Kandinsky 2.2 decoder", "prior": "Kandinsky 2.2 prior", "kandinsky3": "Kandinsky 3 UNet"}
PREFIXES = ("unet.", "prior.")  # what diffusers' PEFT-style savers put in front
SUFFIXES = (("_lora.up.weight", "up"), ("_lora.down.weight", "down"), (".lora_B.weight", "up"),
            (".lora_A.weight", "down"), (".alpha", "alpha"))
DEFAULT_HINTS = {"decoder": "apply it to the decoder UNet", "prior": "apply it to the prior transformer",
                 "kandinsky3": "apply it to the Kandinsky 3 UNet"}
# Text-encoder layers (a T5's `encoder.block.N.layer.M`, diffusers' `text_encoder.` prefix, kohya's `lora_te`): no
# Kandinsky text encoder takes a LoRA here.
TEXT_ENCODER = re.compile(r"(^|\.)text_encoder(_2)?\.|^lora_te\d?_|(^|\.)encoder\.block\.\d+\.layer\.\d+\.")

# Key patterns of LoRAs for other models, checked in order, to say what a foreign file is.
FOREIGN = (
    (r"(^|\.)encoder\.block\.\d+\.layer\.\d+\.", "a T5 text-encoder LoRA (Kandinsky 3's T5 takes no LoRA; "
                                                "Kandinsky 3 LoRAs go on its UNet)"),
    (r"^lora_(unet|te\d?)_", "a Stable Diffusion LoRA (kohya naming)"),
    (r"(^|\.)(input_blocks|output_blocks|middle_block)\.", "a Stable Diffusion LoRA (original naming)"),
    (r"attentions\.\d+\.transformer_blocks\.\d+\.attn[12]\.", "a Stable Diffusion LoRA (diffusers naming)"),
    (r"(^|\.)text_encoder(_2)?\.", "a Stable Diffusion text-encoder LoRA"),
    (r"(^|\.)(double_blocks|single_blocks|single_transformer_blocks)\.", "a Flux LoRA"),
)


@dataclass
class LoraPair:
    """One layer's low-rank update: up (out, rank) @ down (rank, in), times alpha / rank when alpha is given."""

    up: torch.Tensor
    down: torch.Tensor
    alpha: float | None = None

    @property
    def scale(self):
        """alpha / rank, or 1 without alpha (diffusers' files carry none)."""
        return 1.0 if self.alpha is None else self.alpha / self.down.shape[0]

    def delta(self, strength=1.0):
        """strength · scale · up @ down in float32, ComfyUI's order of operations."""
        return (strength * self.scale) * (self.up.float() @ self.down.float())


@dataclass
class Lora:
    """A parsed LoRA file: what it is for ('decoder', 'prior' or 'kandinsky3') and its pairs by target layer."""

    name: str
    kind: str
    pairs: dict = field(default_factory=dict)

    @property
    def ranks(self):
        """The distinct ranks of its layers."""
        return sorted({p.down.shape[0] for p in self.pairs.values()})


def _split_key(key):
    """(name, part) for a LoRA tensor key, part in up / down / alpha; None for keys of no LoRA naming we read."""
    for suffix, part in SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], part
    return None


def _target(name):
    """The model layer a LoRA name refers to: prefix dropped, attn-procs' `.processor.to_out` made `.to_out.0`."""
    for prefix in PREFIXES:
        name = name.removeprefix(prefix)
    module, sep, projection = name.rpartition(".processor.")
    if not sep:
        return name
    return f"{module}.{'to_out.0' if projection == 'to_out' else projection}"


def target_kind(target):
    """'decoder', 'prior' or 'kandinsky3' for a layer a Kandinsky LoRA may patch, else None."""
    for kind, (modules, projections) in TARGETS.items():
        for projection in projections:
            if target.endswith("." + projection) and modules.fullmatch(target[: -len(projection) - 1]):
                return kind
    return None


def describe(keys):
    """What a LoRA that is not a Kandinsky one is for, from its keys."""
    if not keys:
        return "an empty file"
    for pattern, what in FOREIGN:
        if any(re.search(pattern, k) for k in keys):
            return what
    return f"a LoRA for another model (keys like {', '.join(sorted(keys)[:2])})"


def _collect(state_dict, name):
    """{target: {part: tensor}} and the kinds seen; KandinskyError if any key is not a Kandinsky LoRA key."""
    parts, kinds, foreign = {}, set(), []
    for key, tensor in state_dict.items():
        split = _split_key(key)
        kind = split and target_kind(_target(split[0]))
        if not kind:
            foreign.append(key)
            continue
        target = _target(split[0])
        if split[1] in parts.setdefault(target, {}):
            raise KandinskyError(f"{name} gives the {split[1]} weights of {target} twice (in both namings); keep one.")
        parts[target][split[1]] = tensor
        kinds.add(kind)
    text = [k for k in foreign if TEXT_ENCODER.search(k)]
    if parts and text and len(text) == len(foreign):  # a UNet LoRA saved with its text encoder's layers
        raise KandinskyError(f"{name} also holds {len(text)} text-encoder layers (e.g. {text[0]}); the pack applies "
                             f"LoRAs to the {' and '.join(KIND_NAMES[k] for k in sorted(kinds))} only, not to a text "
                             "encoder, and would ignore them: use a LoRA trained without the text encoder, or save it "
                             "without its text_encoder.* keys.")
    if foreign or not parts:
        raise KandinskyError(f"{name} is {describe(foreign or list(state_dict))}, not a Kandinsky LoRA (2.2 decoder or "
                             f"prior, or Kandinsky 3 UNet; {len(foreign)} of {len(state_dict)} keys are not Kandinsky "
                             f"attention layers, e.g. {(foreign or ['(none)'])[0]}); use a LoRA trained for the "
                             "Kandinsky model you load it onto.")
    if len(kinds) > 1:
        raise KandinskyError(f"{name} mixes {' and '.join(sorted(kinds))} layers; LoRA trainers write one file per "
                             "model. Split it into one LoRA per model.")
    return parts, kinds.pop()


def _pair(name, target, parts):
    """A LoraPair from one layer's tensors, checking that up and down are both there, share a rank and are finite."""
    up, down = parts.get("up"), parts.get("down")
    if up is None or down is None:
        raise KandinskyError(f"{name} (a {KIND_NAMES[target_kind(target)]} LoRA) has only the "
                             f"{'down' if up is None else 'up'} weights of {target}; the file is incomplete, export "
                             "the LoRA again.")
    if up.ndim != 2 or down.ndim != 2 or up.shape[1] != down.shape[0]:
        raise KandinskyError(f"{name}: the ranks of {target} do not match (up {tuple(up.shape)}, down "
                             f"{tuple(down.shape)}; up must be (out, rank) and down (rank, in)); the file is damaged or "
                             "not a LoRA, export it again.")
    alpha = parts.get("alpha")
    if alpha is not None and alpha.numel() != 1:
        raise KandinskyError(f"{name}: the alpha of {target} holds {alpha.numel()} numbers, not one; export the LoRA "
                             "again.")
    # Caught here, a NaN names the file; merged, it would only surface as a black image at MoVQ Decode.
    if not all(bool(torch.isfinite(t).all()) for t in (up, down, alpha) if t is not None):
        raise KandinskyError(f"{name} holds NaN or infinite values in the weights of {target} (a diverged training or "
                             "a damaged file); remove this LoRA, or train or export it again.")
    return LoraPair(up, down, None if alpha is None else float(alpha))


def parse_lora(state_dict, name="the LoRA"):
    """A `Lora` from a LoRA state dict in either naming; KandinskyError naming `name` for anything else (including
    NaN or infinite weights)."""
    parts, kind = _collect(state_dict, name)
    return Lora(name, kind, {target: _pair(name, target, p) for target, p in sorted(parts.items())})


def _not_safetensors(path):
    """Why a .safetensors/.sft file cannot be one (empty, text, another format), or None if its header looks sane."""
    if not path.lower().endswith((".safetensors", ".sft")):
        return None
    size = os.path.getsize(path)
    if size == 0:
        return "is empty (0 bytes)"
    with open(path, "rb") as f:
        head = f.read(9)
    header = int.from_bytes(head[:8], "little")
    # A safetensors file opens with its JSON header's length, then the header itself ("{").
    if size < 10 or header > size - 8 or head[8:9] != b"{":
        kind = "a text file" if head.isascii() and head.decode("ascii").isprintable() else "another format"
        return f"is not a safetensors file ({size} bytes, it looks like {kind}: it starts with {head[:8]!r})"
    return None


def read_state_dict(path):
    """The tensors of a LoRA file (.safetensors, or .bin/.pt read with weights_only), refusing a file that is not one
    with a KandinskyError naming it."""
    path, name = os.fspath(path), os.path.basename(path)
    problem = _not_safetensors(path)
    if problem is None:
        try:
            return dict(iter_tensors(path))
        except KandinskyError as err:
            problem = f"cannot be read ({err})"
    raise KandinskyError(f"The LoRA {name} {problem}; pick a LoRA file in models/loras, or download or export this "
                         "one again.")


def read_lora(path):
    """Parse a LoRA file (.safetensors, or .bin/.pt read with weights_only)."""
    return parse_lora(read_state_dict(path), os.path.basename(os.fspath(path)))


def check_fits(lora, kind, shapes, hints=DEFAULT_HINTS):
    """Refuse `lora` unless it is a `kind` LoRA whose every layer exists in `shapes` ({weight key: shape})."""
    if lora.kind != kind:
        raise KandinskyError(f"{lora.name} is a {KIND_NAMES[lora.kind]} LoRA ({len(lora.pairs)} layers), not a "
                             f"{KIND_NAMES[kind]} LoRA; {hints[lora.kind]}.")
    for target, pair in lora.pairs.items():
        shape = shapes.get(target + ".weight")
        wanted = (pair.up.shape[0], pair.down.shape[1])
        if shape is None or tuple(shape) != wanted:
            found = "has no such layer" if shape is None else f"has {tuple(shape)}"
            what = KIND_NAMES[kind].removeprefix("Kandinsky 2.2 ")
            raise KandinskyError(f"{lora.name} was made for a {what} of another shape: its {target} is {wanted} but "
                                 f"this {what} {found}; use a LoRA trained on this model.")


def lora_key_map(weight_keys, prefix=""):
    """{every name a LoRA file may give a layer: `prefix` + the model's weight key}, for ComfyUI's loaders."""
    names = {}
    for key in weight_keys:
        target = key.removesuffix(".weight")
        if key == target or target_kind(target) is None:
            continue
        module, _, projection = target.removesuffix(".0").rpartition(".")
        for start in ("",) + PREFIXES:
            names[start + target] = prefix + key
            names[f"{start}{module}.processor.{projection}"] = prefix + key
    return names


def model_kind(model):
    """The network a LoRA goes into and its kind: a UNet, K3 UNet or PriorTransformer, or the *Models holding one."""
    model = getattr(model, "unet", None) or getattr(model, "prior", None) or model
    kind = getattr(type(model), "lora_kind", None)  # each family's LoRA-able networks name the kind they take
    if kind in KIND_NAMES:
        return model, kind
    raise KandinskyError(f"LoRAs go into a Kandinsky UNet or prior transformer, not a {type(model).__name__}.")


# Per patched network: its original weights (the patched ones only) and the LoRAs merged, in order.
_MERGED = weakref.WeakKeyDictionary()


def apply_lora(model, lora, strength=1.0):
    """Merge `lora` (a path or a Lora) into the model's weights in place; returns the Lora, for remove_lora."""
    lora = lora if isinstance(lora, Lora) else read_lora(lora)
    net, kind = model_kind(model)
    params = dict(net.named_parameters())
    check_fits(lora, kind, {k: p.shape for k, p in params.items()})
    state = _MERGED.setdefault(net, {"originals": {}, "loras": []})
    with torch.no_grad():
        for target, pair in lora.pairs.items():
            weight = params[target + ".weight"]
            state["originals"].setdefault(target, weight.detach().clone())
            merged = weight.float() + pair.delta(strength).to(weight.device)
            weight.copy_(merged.to(weight.dtype))
    state["loras"].append((lora, strength))
    return lora


def remove_lora(model, lora=None):
    """Take `lora` (every LoRA if None) out of the model: originals restored bit for bit, the others merged again."""
    net, _ = model_kind(model)
    state = _MERGED.pop(net, None)
    if state is None:
        return
    params = dict(net.named_parameters())
    with torch.no_grad():
        for target, original in state["originals"].items():
            params[target + ".weight"].copy_(original)
    for merged, strength in state["loras"]:
        if lora is not None and merged is not lora:
            apply_lora(net, merged, strength)
