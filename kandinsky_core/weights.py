"""Read published weight files as they are: safetensors (one file or an index of shards) and weights-only torch pickles.

Both families load through here. Weights go straight into the requested dtype and device, one tensor at a time, into a
model built on the meta device, so a 5 GB fp32 file loaded as fp16 never exists in memory as fp32. Which component a
file holds comes from its `config.json`, the config our writer stores in its metadata, or its tensor names and shapes;
file names are never consulted.
"""
import json
import mmap
import os
import re

import torch
from torch import nn

from .errors import KandinskyError
from .schedulers import scheduler_from_config

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "model.safetensors", "diffusion_pytorch_model.safetensors.index.json",
                "model.safetensors.index.json", "diffusion_pytorch_model.fp16.safetensors", "model.fp16.safetensors",
                "diffusion_pytorch_model.safetensors.index.fp16.json", "model.safetensors.index.fp16.json",
                "diffusion_pytorch_model.bin", "pytorch_model.bin", "diffusion_pytorch_model.bin.index.json",
                "pytorch_model.bin.index.json")


TORCH_EXTENSIONS = (".bin", ".pt", ".pth", ".ckpt")


KANDINSKY3_HINT = "load Kandinsky 3 with the Kandinsky 3 loader (kandinsky_core.kandinsky3.loading)"


SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64,
                      "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U64": torch.uint64, "U32": torch.uint32,
                      "U16": torch.uint16, "U8": torch.uint8, "BOOL": torch.bool}


def weights_path(path, names=WEIGHT_FILES, hint="is it a diffusers component folder such as unet/, movq/ or prior/?"):
    """The weights file of a component folder, the first of `names` it holds (or `path` itself if it is a file)."""
    if os.path.isfile(path):
        return path
    if not os.path.isdir(path):
        raise KandinskyError(f"{path} does not exist; put Kandinsky checkpoints in a folder the loader can see.")
    for name in names:
        if os.path.isfile(os.path.join(path, name)):
            return os.path.join(path, name)
    raise KandinskyError(f"{path} holds no weights file (looked for {', '.join(names)}); {hint}")


def _is_index(path):
    name = os.path.basename(path)
    return name.endswith(".json") and ".index" in name


def shard_files(path):
    """The files behind a weights path: the file itself, or every shard a `*.index*.json` names (all must exist)."""
    if not _is_index(path):
        return [path]
    try:
        with open(path) as f:
            names = sorted(set(json.load(f)["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise KandinskyError(f"{path} is not a readable sharded-weights index ({type(err).__name__}: {err}); "
                             "download it again.") from None
    files = [os.path.join(os.path.dirname(path), n) for n in names]
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise KandinskyError(f"{path} lists {len(missing)} shard(s) that are not there: {', '.join(missing)}; "
                             "download every shard the index names into the same folder.")
    return files


def _safetensors_error(path, err):
    size = os.path.getsize(path)
    kind = "empty" if size == 0 else "truncated or corrupt"
    return KandinskyError(f"{path} is {kind} ({size} bytes; {err}); download the file again.")


def _read_header(file):
    """({key: (dtype, shape, begin, end)} with offsets in the file, metadata) of a safetensors file, checked against its size."""
    size = os.path.getsize(file)
    try:
        with open(file, "rb") as f:
            header_size = int.from_bytes(f.read(8), "little")
            if size < 8 or header_size > size - 8:
                raise ValueError(f"the header says {header_size} bytes")
            header = json.loads(f.read(header_size))
        metadata, start, tensors = header.pop("__metadata__", None) or {}, 8 + header_size, {}
        for key, entry in header.items():
            if entry["dtype"] not in SAFETENSORS_DTYPES:
                raise KandinskyError(f"{file}: tensor {key} is stored as {entry['dtype']}, which kandinsky_core cannot "
                                     "read; convert the file to F32, F16, BF16 or F8.")
            dtype, shape, (begin, end) = SAFETENSORS_DTYPES[entry["dtype"]], tuple(entry["shape"]), entry["data_offsets"]
            if not 0 <= begin <= end <= size - start or end - begin != torch.Size(shape).numel() * dtype.itemsize:
                raise ValueError(f"tensor {key} lies outside the file or has the wrong byte size")
            tensors[key] = dtype, shape, begin + start, end + start
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        if isinstance(err, KandinskyError):
            raise
        raise _safetensors_error(file, f"{type(err).__name__}: {err}") from None
    return tensors, metadata


def cast(t, dtype, device):
    """`t` on `device`, floating tensors in `dtype` (None: as stored); the same tensor when nothing changes."""
    return t.to(device=device, dtype=dtype if dtype is not None and t.is_floating_point() else None)


def iter_tensors(path, dtype=None, device="cpu", as_stored=()):
    """Yield (key, tensor) from a safetensors/.bin file (or a sharded index), cast one tensor at a time (the keys in
    `as_stored` keep their dtype)."""
    for file in shard_files(path):
        if file.endswith(TORCH_EXTENSIONS):
            sd = _torch_load(file)
            for k in list(sd):
                yield k, cast(sd.pop(k), None if k in as_stored else dtype, device)
        else:
            yield from _iter_safetensors(file, dtype, device, as_stored)


def _iter_safetensors(file, dtype, device, as_stored=()):
    """One file's tensors, in file order, over a private memory map of it.

    A tensor that keeps its dtype on the CPU is a view of the map: page cache, nothing copied or allocated. A tensor that
    is cast or moved is read once from the map and this process's pages of it are then dropped, so a converting load
    holds the converted model plus the tensor being cast, and reads the file at the speed of the page cache or disk.
    """
    tensors, _ = _read_header(file)
    if not tensors:
        return
    with open(file, "rb") as f:  # copy-on-write: views are writable (torch wants that) and the file is never changed
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    for key, (source, shape, begin, end) in sorted(tensors.items(), key=lambda item: item[1][2]):
        t = _view(mapped, source, shape, begin, end)
        out = cast(t, None if key in as_stored else dtype, device)
        if out is not t:
            del t
            _release(mapped, begin, end)
        yield key, out


def _view(mapped, dtype, shape, begin, end):
    if begin == end:
        return torch.empty(shape, dtype=dtype)
    t = torch.frombuffer(mapped, dtype=dtype, count=(end - begin) // dtype.itemsize, offset=begin).reshape(shape)
    return t if begin % dtype.itemsize == 0 else t.clone()  # writers pad to alignment; kernels may assume it


def _release(mapped, begin, end):
    """Unmap this process's pages inside [begin, end); pages shared with neighbouring tensors stay."""
    page = mmap.PAGESIZE
    first, last = -(-begin // page) * page, end // page * page
    if last > first and hasattr(mapped, "madvise"):  # Windows has no madvise: its pages go when the map does
        mapped.madvise(mmap.MADV_DONTNEED, first, last - first)


SAFETENSORS_NAMES = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}
MARKER = "kandinsky"  # the metadata key our writer stores the component kind under (save_model)


def save_file(path, tensors, metadata=None):
    """Write {key: tensor} as one safetensors file, tensor by tensor (one tensor's copy at a time, whatever its device
    and layout), widest dtypes first so that every tensor lies aligned for the mapping loads; returns `path`.

    The file appears under its name only once complete: an interrupted save leaves no file that looks whole.
    """
    order = sorted(tensors, key=lambda k: (-tensors[k].dtype.itemsize, k))
    header, offset = {}, 0
    for key in order:
        t = tensors[key]
        if t.dtype not in SAFETENSORS_NAMES:
            raise KandinskyError(f"{key} is a {t.dtype} tensor, which safetensors cannot store.")
        size = t.numel() * t.dtype.itemsize
        header[key] = {"dtype": SAFETENSORS_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-aligned, as the safetensors writer pads it
    partial = path + ".part"
    with open(partial, "wb") as f:
        f.write(len(encoded).to_bytes(8, "little") + encoded)
        for key in order:
            t = tensors[key].detach()
            if t.numel():
                f.write(t.to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().data)
    os.replace(partial, path)
    return path


def save_model(path, state, kind, config, **metadata):
    """Save a loaded model's `state` dict with its `config` dict and component `kind` (what loaders list it as) in the
    metadata, plus any further string `metadata`."""
    return save_file(path, state, {"format": "pt", MARKER: kind, "config": json.dumps(config), **metadata})


def main_dtype(path):
    """The floating dtype most of a safetensors file's values are stored in (a saved model's storage dtype)."""
    counts = {}
    for dtype, shape, _, _ in _read_header(path)[0].values():
        if dtype.is_floating_point:
            counts[dtype] = counts.get(dtype, 0) + torch.Size(shape).numel()
    return max(counts, key=counts.get) if counts else None


def read_metadata(path):
    """The string metadata of a safetensors file ({} for other files)."""
    if path.endswith(TORCH_EXTENSIONS) or _is_index(path):
        return {}
    return _read_header(path)[1]


def load_pickle(file):
    """What a weights-only torch pickle holds, memory-mapped where the file allows it (zip format, as torch.save writes);
    KandinskyError naming the file if it is empty, damaged or holds anything but tensors and plain containers."""
    if os.path.getsize(file) == 0:
        raise KandinskyError(f"{file} is empty (0 bytes); download the file again.")
    try:
        try:
            return torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "zip" not in str(err):
                raise
            return torch.load(file, map_location="cpu", weights_only=True)  # a legacy (pre-zip) pickle cannot be mapped
    except Exception as err:  # torch raises many types here; all mean the same to the user
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if unsafe:  # torch's own message suggests loading it anyway, which would run the file's code
            raise KandinskyError(f"{file} holds Python objects besides tensors ({unsafe[1]}), which are refused unread "
                                 "for safety: it is not a plain weights file. Download the checkpoint again from its "
                                 "publisher, preferably as .safetensors.") from None
        raise KandinskyError(f"{file} is not a loadable PyTorch weights file ({type(err).__name__}: {err}); it is cut "
                             "off or damaged: download it again, preferably as .safetensors.") from None


def _torch_load(file):
    sd = load_pickle(file)
    sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
    if not isinstance(sd, dict):
        raise KandinskyError(f"{file} holds a {type(sd).__name__}, not a state dict of tensors.")
    return sd


def read_shapes(path):
    """{key: shape} of a weights file, reading only the safetensors header when possible."""
    shapes = {}
    for file in shard_files(path):
        if file.endswith(TORCH_EXTENSIONS):
            shapes.update({k: tuple(v.shape) for k, v in _torch_load(file).items()})
        else:
            shapes.update({k: shape for k, (_, shape, _, _) in _read_header(file)[0].items()})
    return shapes


def read_metadata_config(path, key="config"):
    """The JSON our writer stored under `key` (the config; "scheduler": its scheduler config) in a safetensors file's
    metadata, or None."""
    meta = read_metadata(path) if os.path.isfile(path) else {}
    return json.loads(meta[key]) if key in meta else None


def describe(shapes):
    """Name the kind of checkpoint a state dict's keys look like, for errors about foreign files."""
    keys = list(shapes)
    looks = [
        ("add_time_condition.", f"a Kandinsky 3 UNet; {KANDINSKY3_HINT}"),
        ("SelfAttention.relative_attention_bias", f"a T5 text encoder (Kandinsky 3 uses one); {KANDINSKY3_HINT}"),
        ("model.diffusion_model.", "a Stable Diffusion checkpoint (ckpt/safetensors with UNet, VAE and CLIP)"),
        ("first_stage_model.", "a Stable Diffusion checkpoint"),
        ("lora_", "a LoRA"),
        ("add_embedding.", "a Kandinsky 2.x decoder UNet; load it with the Kandinsky 2 decoder loader"),
        ("prd_embedding", "a Kandinsky 2.x prior; load it with the Kandinsky 2 prior loader"),
        ("transformer_blocks.0.attn1.to_q", "a Stable Diffusion-style diffusers UNet or transformer"),
        ("text_model.encoder.", "a CLIP text encoder"),
        ("vision_model.encoder.", "a CLIP vision encoder"),
        ("encoder.down.0.", "a Stable Diffusion VAE (original layout)"),
        ("quant_conv", "a VAE"),
        ("roberta.", "an XLM-RoBERTa / RoBERTa model"),
    ]
    for marker, what in looks:
        if any(marker in k for k in keys):
            return what
    return f"an unknown model ({len(keys)} tensors, e.g. {', '.join(keys[:3])})"


def count_indices(shapes, pattern):
    """How many distinct values the group of `pattern` takes over the tensor names (blocks, layers per block...)."""
    return len({m.group(1) for k in shapes for m in [re.match(pattern, k)] if m})


def load_weights(model, path, dtype=None, device="cpu", reference=None, *, tensors=None, config_origin=None,
                 mismatch_hint=None):
    """Strictly load `path` into a (meta-built) model and freeze it, naming missing, unexpected and mis-shaped tensors.

    The file is checked against `reference` (default: `model` itself), a plain torch build of the same config on the
    meta device: layers from other `operations` may create their weights only when the state dict reaches them (as
    ComfyUI's do under its dynamic VRAM loading), so their model lists no weights to compare with before loading.
    `tensors` gives the (key, tensor) pairs when the caller reads `path` its own way; `config_origin` says where the
    right config.json comes from and `mismatch_hint` what a key mismatch means, in the errors. Loaded models are for
    inference, so no parameter requires grad.
    """
    expected = (model if reference is None else reference).state_dict()
    sd = {}
    for k, t in iter_tensors(path, dtype, device) if tensors is None else tensors:
        if k in expected and tuple(expected[k].shape) != tuple(t.shape):
            origin = f" ({config_origin})" if config_origin else ""
            raise KandinskyError(f"{path}: tensor {k} has shape {tuple(t.shape)} but the config says "
                                 f"{tuple(expected[k].shape)}; the config.json does not belong to these weights: copy the one "
                                 f"that came with them{origin}.")
        sd[k] = t
    missing, unexpected = sorted(set(expected) - set(sd)), sorted(set(sd) - set(expected))
    if missing or unexpected:
        hint = mismatch_hint or f"the file looks like {describe({k: t.shape for k, t in sd.items()})}."
        raise KandinskyError(f"{path} does not match the model its config describes: {len(missing)} missing tensors "
                             f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}); {hint}")
    model.load_state_dict(sd, strict=True, assign=True)
    return model.requires_grad_(False)


def component_path(path, kind):
    """Accept a repo folder (with `kind/` inside), a component folder or a single file."""
    if os.path.isdir(path) and os.path.isdir(os.path.join(path, kind)):
        return os.path.join(path, kind)
    return path


def read_scheduler_config(folder, sub="scheduler"):
    """The raw `<folder>/<sub>/scheduler_config.json` dict (defaults left unfilled, as diffusers reads it)."""
    path = os.path.join(folder, sub, "scheduler_config.json")
    if not os.path.isfile(path):
        raise KandinskyError(f"{folder} has no {sub}/scheduler_config.json; copy it from the kandinsky-community repo.")
    with open(path) as f:
        return json.load(f)


def load_scheduler(folder, sub="scheduler"):
    """The scheduler `<folder>/<sub>/scheduler_config.json` describes."""
    return scheduler_from_config(read_scheduler_config(folder, sub))


def read_config(path, config_cls, class_name, from_shapes, check_shapes, *, what, hint=lambda name: ""):
    """The config of the component at `path` (folder or one file): its config.json, else the config our writer keeps in
    the file's metadata, else `from_shapes(shapes)`.

    A config.json of another `_class_name` is refused, saying it is not `what` (plus `hint(name)`); `check_shapes(shapes)`
    refuses a lone file of another kind.
    """
    weights = weights_path(path)
    config_file = os.path.join(path, "config.json")
    if os.path.isdir(path) and os.path.isfile(config_file):
        with open(config_file) as f:
            d = json.load(f)
        name = str(d.get("_class_name", class_name))
        if name != class_name:
            raise KandinskyError(f"{config_file} describes a {name}, not {what} ({class_name}){hint(name)}.")
        return config_cls.from_dict(d)
    shapes = read_shapes(weights)
    check_shapes(shapes)
    meta = read_metadata_config(weights)
    return config_cls.from_dict(meta) if meta is not None else from_shapes(shapes)


def build(cls, config, what, *, operations=nn, dtype=None):
    """A `cls` model for `config` on the meta device; a config no such model can have raises KandinskyError naming `what`."""
    try:
        return cls(config, operations=operations, dtype=dtype, device="meta")
    except KandinskyError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, ZeroDivisionError, RuntimeError) as err:
        raise KandinskyError(f"The {what} config describes a model that cannot be built ({type(err).__name__}: {err}); "
                             "its config.json is damaged or belongs to another model: copy it again from the "
                             "kandinsky-community repo.") from None


def load_model(cls, config, path, what, *, dtype=None, device="cpu", operations=nn):
    """A `cls` model for `config`, built on meta from `operations` and strictly filled from the weights at `path`."""
    model = build(cls, config, what, operations=operations, dtype=dtype)
    # A plain build to check the file against: lazily allocating `operations` list no weights before loading.
    reference = model if operations is nn else build(cls, config, what)
    return load_weights(model, weights_path(path), dtype=dtype, device=device, reference=reference).eval()
