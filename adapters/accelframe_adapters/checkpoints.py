"""Reading weight files and fitting them to a network, with errors that list every bad key.

Formats: a single ``.safetensors`` file, a sharded diffusers folder (``*.safetensors.index.json``
with its shards, or a ``config.json`` beside the weights), and PyTorch ``.pt`` / ``.pth`` files read
with ``torch.load(weights_only=True)`` (never unpickling code). Family modules pick the tensors
they need (a prefix, an EMA copy) and map key names; :func:`fit` then loads them strictly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import nn

from accelframe.errors import CheckpointError

StateDict = dict[str, torch.Tensor]


def read_tensors(path: str | Path) -> StateDict:
    """Every tensor of a weight file or a diffusers weight folder, keyed as stored."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(str(p), "no such file or folder")
    if p.is_dir():
        return _read_folder(p)
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(p))
        except Exception as err:  # safetensors raises its own error types
            raise CheckpointError(str(p), f"not a readable safetensors file ({err})") from err
    if p.suffix in (".pt", ".pth", ".bin", ".ckpt"):
        try:
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
        except Exception as err:
            raise CheckpointError(str(p), f"not a readable weights-only PyTorch file ({err})") from err
        if not isinstance(obj, Mapping):
            raise CheckpointError(str(p), f"holds a {type(obj).__name__}, not a dict of tensors")
        return dict(obj)
    raise CheckpointError(str(p), "unknown weight format: expected .safetensors, .pt, .pth, .bin, "
                                  ".ckpt or a folder of safetensors shards")


def _read_folder(folder: Path) -> StateDict:
    """A diffusers-style folder: an index of shards, or every ``.safetensors`` file in it."""
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if indexes:
        index = json.loads(indexes[0].read_text())
        shards = sorted(set(index.get("weight_map", {}).values()))
        if not shards:
            raise CheckpointError(str(indexes[0]), "index lists no shards under 'weight_map'")
        files = [folder / s for s in shards]
    else:
        files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(str(folder), "folder holds no .safetensors weights")
    out: StateDict = {}
    for f in files:
        if not f.exists():
            raise CheckpointError(str(f), "shard named by the index is missing")
        out.update(read_tensors(f))
    return out


def read_config(path: str | Path) -> dict | None:
    """``config.json`` beside (or inside) a weight path, or None when there is none."""
    p = Path(path)
    cfg = (p if p.is_dir() else p.parent) / "config.json"
    return json.loads(cfg.read_text()) if cfg.exists() else None


def strip_prefix(sd: Mapping[str, torch.Tensor], prefix: str) -> StateDict:
    """Keys under ``prefix`` with it removed; keys without it are dropped."""
    return {k[len(prefix):]: t for k, t in sd.items() if k.startswith(prefix)}


def rename(sd: Mapping[str, torch.Tensor], mapping: Callable[[str], str | None]) -> StateDict:
    """Apply a key mapping; keys mapped to None are dropped."""
    out: StateDict = {}
    for k, t in sd.items():
        new = mapping(k)
        if new is not None:
            out[new] = t
    return out


def fit(module: nn.Module, sd: Mapping[str, torch.Tensor], path: str, *, what: str) -> None:
    """Load ``sd`` into ``module`` strictly; raise :class:`CheckpointError` listing every missing,
    unexpected and misshaped key (no weight is loaded when any is wrong)."""
    own = module.state_dict()
    missing = sorted(k for k in own if k not in sd)
    unexpected = sorted(k for k in sd if k not in own)
    misshaped = sorted((k, tuple(sd[k].shape), tuple(own[k].shape))
                       for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape))
    if missing or unexpected or misshaped:
        raise CheckpointError(path, f"does not fit {what}", missing=missing, unexpected=unexpected,
                              misshaped=misshaped)
    with torch.no_grad():
        for k, t in own.items():
            t.copy_(sd[k].to(t.dtype))


__all__ = ["StateDict", "fit", "read_config", "read_tensors", "rename", "strip_prefix"]
