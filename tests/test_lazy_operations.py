"""Loading into models whose layers create their weights only when a state dict reaches them.

ComfyUI's `comfy.ops` layers do that under DynamicVRAM (ComfyUI 0.30.0 and newer on NVIDIA GPUs): a freshly built
Linear or Embedding has no weight tensor, so the model's own state dict cannot say what the file must hold. The
loaders check files against a plain build instead; these layers stand in for ComfyUI's, so the core tests hold with
no ComfyUI installed.
"""
import types

import pytest
import torch
from torch import nn

from kandinsky_core import weights
from kandinsky_core.kandinsky2 import loading, tiny
from kandinsky_core.errors import KandinskyError
from kandinsky_core.kandinsky3 import loading as K3L
from kandinsky_core.kandinsky3 import tiny as K3tiny
from kandinsky_core.kandinsky3.t5 import load_t5


class LazyLinear(nn.Linear):
    """A Linear with no weight until `load_state_dict` assigns one, as `comfy.ops` builds them under DynamicVRAM."""

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):
        nn.Module.__init__(self)
        self.in_features, self.out_features, self.has_bias = in_features, out_features, bias
        self.weight = self.bias = None

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        for name in ("weight", "bias") if self.has_bias else ("weight",):
            if prefix + name in state_dict:
                setattr(self, name, nn.Parameter(state_dict[prefix + name], requires_grad=False))
            else:
                missing.append(prefix + name)


class LazyEmbedding(nn.Embedding):
    """An Embedding whose weight is a meta placeholder until loaded (ComfyUI keeps its shape visible this way)."""

    def __init__(self, num_embeddings, embedding_dim, *args, device=None, dtype=None, **kwargs):
        super().__init__(num_embeddings, embedding_dim, *args, device="meta", dtype=dtype, **kwargs)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        if prefix + "weight" in state_dict:
            self.weight = nn.Parameter(state_dict[prefix + "weight"], requires_grad=False)
        else:
            missing.append(prefix + "weight")


LAZY = types.SimpleNamespace(**{name: getattr(nn, name) for name in dir(nn) if name[0].isupper()})
LAZY.Linear, LAZY.Embedding = LazyLinear, LazyEmbedding


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("lazy")
    return {**tiny.write_all(str(root)), "kandinsky-3": K3tiny.write_kandinsky3(str(root / "kandinsky-3"))}


def test_lazy_layers_list_no_weights_before_loading(folders):
    """What the loaders must not rely on: such a model's state dict lacks every Linear weight, so checking a file
    against it calls every Linear weight in the file unexpected."""
    assert "weight" not in LazyLinear(4, 8).state_dict()
    unet = folders["kandinsky-2-2-decoder"] + "/unet"
    lazy = loading.build("unet", loading.read_config(unet, "unet"), operations=LAZY)
    with pytest.raises(KandinskyError, match="0 missing tensors"):
        weights.load_weights(lazy, weights.weights_path(unet), reference=lazy)


def same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("repo, kind", [("kandinsky-2-2-decoder", "unet"), ("kandinsky-2-2-decoder", "movq"),
                                        ("kandinsky-2-2-prior", "prior"), ("kandinsky-2-1", "unet")])
def test_2x_components_load_into_lazy_layers(folders, repo, kind):
    lazy = loading.load_component(folders[repo], kind, operations=LAZY)
    assert same_state(lazy, loading.load_component(folders[repo], kind))


def test_2x_text_encoder_loads_into_lazy_layers(folders):
    folder = f"{folders['kandinsky-2-1']}/text_encoder"
    assert same_state(loading.load_mclip(folder, operations=LAZY), loading.load_mclip(folder))


def test_kandinsky3_unet_and_t5_load_into_lazy_layers(folders):
    folder = folders["kandinsky-3"]
    assert same_state(K3L.load_unet(folder, operations=LAZY), K3L.load_unet(folder))
    lazy, plain = load_t5(f"{folder}/text_encoder", operations=LAZY), load_t5(f"{folder}/text_encoder")
    assert same_state(lazy, plain)
    ids = torch.tensor([[5, 9, 1, 0]])
    # Same weights, same layers' math, same input: the same computation, so the same states bit for bit.
    assert torch.equal(lazy(ids, ids.ne(0).long()), plain(ids, ids.ne(0).long()))


def test_a_foreign_file_is_still_refused_with_lazy_layers(folders):
    """The check that a file fits its config still runs: a MoVQ file given as the UNet is named, not half-loaded."""
    movq = weights.weights_path(f"{folders['kandinsky-2-2-decoder']}/movq")
    config = loading.read_config(folders["kandinsky-2-2-decoder"] + "/unet", "unet")
    with pytest.raises(KandinskyError, match="does not match the model its config describes"):
        weights.load_weights(loading.build("unet", config, operations=LAZY), movq,
                             reference=loading.build("unet", config))
