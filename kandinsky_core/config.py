"""Helpers shared by the model configs: read a diffusers `config.json` dict into a dataclass and back."""
from dataclasses import field, fields


def from_dict(cls, d):
    """Build dataclass `cls` from a config dict, ignoring keys it does not know (diffusers adds many)."""
    known = {f.name for f in fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in known})


def extension(default):
    """A config field diffusers' class does not have; `to_dict` leaves it out while it holds `default`."""
    return field(default=default, metadata={"extension": True})


def diffusers_fields(config):
    """The config's fields as diffusers' class takes them: extension fields only where they are not the default."""
    return {f.name: getattr(config, f.name) for f in fields(config)
            if not (f.metadata.get("extension") and getattr(config, f.name) == f.default)}


def to_dict(config, class_name):
    """The config as a diffusers-style `config.json` dict (without extension fields at their defaults)."""
    d = {k: list(v) if isinstance(v, tuple) else v for k, v in diffusers_fields(config).items()}
    return {"_class_name": class_name, **d}
