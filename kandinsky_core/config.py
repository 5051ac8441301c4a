"""Helpers shared by the model configs: read a diffusers `config.json` dict into a dataclass and back."""
from dataclasses import asdict, fields


def from_dict(cls, d):
    """Build dataclass `cls` from a config dict, ignoring keys it does not know (diffusers adds many)."""
    known = {f.name for f in fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in known})


def to_dict(config, class_name):
    """The config as a diffusers-style `config.json` dict."""
    d = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}
    return {"_class_name": class_name, **d}
