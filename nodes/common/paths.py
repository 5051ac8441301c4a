"""Where the pack finds checkpoints: ComfyUI's `models/kandinsky` folder (plus extra_model_paths.yaml entries), and
the single files Kandinsky Save Model writes, also in ComfyUI's own `diffusion_models`, `text_encoders` and `vae`."""
import json
import os

import folder_paths

from ...kandinsky_core import movq, weights
from ...kandinsky_core.errors import KandinskyError
from ...kandinsky_core.kandinsky2 import loading as L2
from ...kandinsky_core.kandinsky3 import loading as L3
from ...kandinsky_core.kandinsky3 import t5

FOLDER = "kandinsky"
WEIGHT_EXTENSIONS = (".safetensors", ".sft", ".bin", ".pt", ".pth", ".ckpt")
REPO_MARKERS = {"prior": ("prior",), "decoder": ("unet",), "movq": ("movq",)}
# Loader kind: (ComfyUI's model folder for it, the marker kandinsky_core's save functions write).
SAVED = {"decoder": ("diffusion_models", L2.UNET_KIND), "kandinsky3": ("diffusion_models", L3.UNET_KIND),
         "t5": ("text_encoders", t5.T5_KIND), "movq": ("vae", movq.MOVQ_KIND)}
_MARKERS = {}  # (path, size, mtime): the file's marker, so listing a big diffusion_models folder reads each header once


def register():
    """Make `models/kandinsky` a ComfyUI model folder, keeping paths extra_model_paths.yaml already added under the key."""
    default = os.path.join(folder_paths.models_dir, FOLDER)
    # The yaml is read before packs load, and creates the key with no extension filter and without our default path.
    folders, extensions = folder_paths.folder_names_and_paths.get(FOLDER, ([], set()))
    folders = folders + [default] if default not in folders else folders
    folder_paths.folder_names_and_paths[FOLDER] = (folders, extensions or set(folder_paths.supported_pt_extensions))
    os.makedirs(default, exist_ok=True)


def _is_depth_model(folder):
    config = os.path.join(folder, "config.json")
    if not os.path.isfile(config):
        return False
    with open(config) as f:
        architectures = json.load(f).get("architectures") or []
    return any(a.endswith("ForDepthEstimation") for a in architectures)


def _unet_config(folder):
    """(the `_class_name` of folder's unet/config.json, why it cannot be read or None); class None when unreadable."""
    config = os.path.join(folder, "unet", "config.json")
    if not os.path.isfile(config):
        return None, "has no unet/config.json"
    try:
        with open(config, encoding="utf-8") as f:
            d = json.load(f)
        return (d.get("_class_name"), None) if isinstance(d, dict) else (None, "holds no JSON object")
    except (OSError, ValueError) as err:
        return None, f"cannot be read as JSON ({type(err).__name__}: {err}: cut off or damaged)"


def is_kandinsky3(folder):
    """Whether `folder` is a kandinsky-3 repo folder (its unet/config.json names Kandinsky3UNet)."""
    return _unet_config(folder)[0] == "Kandinsky3UNet"


def check_kandinsky3(folder):
    """Refuse a folder that is not a kandinsky-3 one, saying what is wrong with its unet/config.json."""
    name, problem = _unet_config(folder)
    if name == "Kandinsky3UNet":
        return
    if name == "UNet2DConditionModel":
        raise KandinskyError(f"{folder} is a Kandinsky 2.x decoder (its unet/config.json names UNet2DConditionModel), "
                             "not a kandinsky-3 folder; load it with Kandinsky Decoder Loader, or pick a kandinsky-3 "
                             "folder.")
    if problem is None:
        problem = f"names {name!r}, not Kandinsky3UNet"
    where = "" if problem.startswith("has no") else "'s unet/config.json"
    raise KandinskyError(f"{folder}{where} {problem}; pick a kandinsky-3 folder, or copy unet/config.json (or the "
                         "whole unet/ folder) of kandinsky-community/kandinsky-3 into it again.")


def _is_t5_folder(folder):
    """Whether `folder` holds a T5 and its tokenizer together, as Kandinsky 3.1's weights/flan_ul2_encoder/ does."""
    config = os.path.join(folder, "config.json")
    if not (os.path.isfile(config) and os.path.isfile(os.path.join(folder, "spiece.model"))):
        return False
    try:
        with open(config, encoding="utf-8") as f:
            return json.load(f).get("model_type") == "t5"
    except (OSError, ValueError, AttributeError):
        return False


def _damaged_unet_config(folder):
    """Whether folder has a unet/config.json that cannot be read: offered to both UNet loaders, which say so."""
    name, problem = _unet_config(folder)
    return name is None and problem is not None and not problem.startswith("has no")


def _matches(folder, kind):
    if kind == "depth":
        return _is_depth_model(folder)
    if kind == "t5":
        return _matches(folder, "kandinsky3") or _is_t5_folder(folder)
    if kind in ("kandinsky3", "decoder") and is_kandinsky3(folder):  # a kandinsky-3 folder is no 2.x decoder
        return kind == "kandinsky3"
    if kind == "kandinsky3":
        return _damaged_unet_config(folder)
    return any(os.path.isdir(os.path.join(folder, m)) for m in REPO_MARKERS[kind])


def original_files():
    """The torch pickles (.pt, .pth, .ckpt) in the model folders: where the original Kandinsky 3 UNet, projection and
    MoVQ files are (which is which, their loader tells from their keys)."""
    found = set()
    for root in folder_paths.get_folder_paths(FOLDER):
        for dirpath, _, filenames in os.walk(root, followlinks=True):
            rel = os.path.relpath(dirpath, root)
            found.update(os.path.join(rel, f).replace(os.sep, "/").removeprefix("./")
                         for f in filenames if f.lower().endswith((".pt", ".pth", ".ckpt")))
    return sorted(found)


def _marker(path):
    """The component kind a safetensors file's metadata names (our writer's marker), or None."""
    stat = os.stat(path)
    key = (path, stat.st_size, stat.st_mtime_ns)
    if key not in _MARKERS:
        try:
            _MARKERS[key] = weights.read_metadata(path).get(weights.MARKER)
        except KandinskyError:  # a damaged or foreign file is simply not one of ours
            _MARKERS[key] = None
    return _MARKERS[key]


def saved_files(kind):
    """The files Kandinsky Save Model wrote for loader `kind`, in models/kandinsky and in ComfyUI's folder for it."""
    folder, marker = SAVED[kind]
    found = set()
    for key in (FOLDER, folder):
        for name in folder_paths.get_filename_list(key):
            path = folder_paths.get_full_path(key, name)
            if name.lower().endswith((".safetensors", ".sft")) and path and _marker(path) == marker:
                found.add(name)
    return sorted(found)


def entries(kind):
    """Loader choices for `kind` ('prior', 'decoder', 'movq', 'depth', 'kandinsky3' or 't5'): matching folders, then
    lone weight files (for 'kandinsky3' and 't5' only those Kandinsky Save Model wrote; none for 'depth')."""
    folders, files = set(), set()
    for root in folder_paths.get_folder_paths(FOLDER):
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            rel = os.path.relpath(dirpath, root).replace(os.sep, "/")
            if rel != "." and _matches(dirpath, kind):
                folders.add(rel + "/")
            if rel != "." and any(_matches(dirpath, k) for k in ("prior", "decoder", "movq", "depth", "t5")):
                dirnames[:] = []  # the parts of a checkpoint folder are not offered on their own
                continue
            if kind not in ("depth", "kandinsky3", "t5"):
                files.update(os.path.join(rel, f).replace(os.sep, "/").removeprefix("./")
                             for f in filenames if f.lower().endswith(WEIGHT_EXTENSIONS))
    if kind in SAVED:
        files.update(saved_files(kind))
    return sorted(folders) + sorted(files)


def resolve(name, folder=FOLDER, kind=None):
    """The absolute path of a loader choice, refusing anything outside the model folders of `folder` (and of
    ComfyUI's folder for loader `kind`, where Kandinsky Save Model writes)."""
    if not isinstance(name, str) or not name:
        raise KandinskyError(f"{name!r} is not a checkpoint name; pick a checkpoint from the loader's list.")
    roots = folder_paths.get_folder_paths(folder) + (folder_paths.get_folder_paths(SAVED[kind][0]) if kind else [])
    for root in roots:
        root = os.path.realpath(root)
        path = os.path.realpath(os.path.join(root, name))
        if os.path.commonpath([root, path]) != root:
            raise KandinskyError(f"'{name}' points outside the {folder} model folders ({', '.join(roots)}); "
                                 "pick a checkpoint from the list.")
        if os.path.exists(path):
            return path
    raise KandinskyError(f"'{name}' was not found in {', '.join(roots)}; put the checkpoint there (see the pack's README) "
                         "and refresh the node list.")
