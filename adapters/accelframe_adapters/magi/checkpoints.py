"""Reading and writing MAGI-1 DiT weights in the released layout.

A MAGI model folder holds ``inference_weight/`` (base) or ``inference_weight.distill/`` (distilled);
inside, either ``model.safetensors.index.json`` (``{"metadata": ..., "weight_map": {key: shard}}``)
with ``model-0000X-of-0000N.safetensors`` shards, or one ``model.safetensors``. Keys carry no
prefix (``videodit_blocks.layers.0.mlp.linear_fc1.weight``). FP8 folders are out of scope.

The config comes from, in order: the ``cfg`` argument; a ``config`` entry (JSON of
:class:`MagiDiTConfig` fields) in the index's metadata or a shard's safetensors metadata, which
:func:`save_magi_checkpoint` writes; a ``config.json`` of those fields beside the weights; else the
tensor shapes (every size field is readable from them: ``kv_channels`` from ``q_layernorm.weight``);
the fields shapes cannot tell (``x_rescale_factor``, ``half_channel_vae``) come from the released
size the shapes match, else the defaults. Every key is checked against the network, by shape only,
before a single tensor is read.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

import attrs
import torch
from torch import nn

from accelframe.errors import CheckpointError, ConfigError
from accelframe_adapters import checkpoints as ck
from accelframe_adapters.magi.dit import MagiDiT, MagiDiTConfig

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
_P = "videodit_blocks.layers.0."


def weight_folder_name(distill: bool = False) -> str:
    return "inference_weight.distill" if distill else "inference_weight"


@attrs.frozen(kw_only=True)
class MagiCheckpointInfo:
    """Where the weights came from and how the config was found."""

    path: str  # what the caller passed
    files: tuple[str, ...]  # the safetensors files read
    config_source: str  # "argument", "metadata", "config.json" or "shapes"
    dtype: str  # of the loaded parameters
    metadata: dict[str, Any] = attrs.field(factory=dict)  # the index's (or single file's) metadata


# ------------------------------------------------------------------------------------------------
# locating and reading
# ------------------------------------------------------------------------------------------------


def _weight_files(path: Path, distill: bool) -> tuple[list[Path], dict[str, Any], Path]:
    """The safetensors files of a model folder, a weight folder or one file, the index metadata, and
    the folder they are in."""
    if not path.exists():
        raise CheckpointError(str(path), "no such file or folder")
    if path.is_file():
        if path.suffix != ".safetensors":
            raise CheckpointError(str(path), "not a .safetensors file")
        return [path], {}, path.parent
    sub = path / weight_folder_name(distill)
    folder = sub if sub.is_dir() else path
    index = folder / INDEX
    if index.exists():
        files, meta = ck.read_index(index)  # shards inside the folder and present, metadata an object
        return files, meta, folder
    if (folder / SINGLE).exists():
        return [folder / SINGLE], {}, folder
    other = "inference_weight.distill" if not distill else "inference_weight"
    hint = f" (found {other}/: pass distill={not distill})" if (path / other).is_dir() else ""
    raise CheckpointError(str(path), f"holds no {weight_folder_name(distill)}/, {INDEX} or {SINGLE}" + hint)


def _shapes(files: list[Path]) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Every key's shape across the files (nothing loaded), and the first file's metadata."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    meta: dict[str, str] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as fh:
                if not meta:
                    meta = dict(fh.metadata() or {})
                for k in fh.keys():
                    shapes[k] = tuple(fh.get_slice(k).get_shape())
        except Exception as err:  # safetensors raises its own error types
            raise CheckpointError(str(f), f"not a readable safetensors file ({err})") from err
    return shapes, meta


# ------------------------------------------------------------------------------------------------
# config
# ------------------------------------------------------------------------------------------------


def config_from_shapes(shapes: Mapping[str, tuple[int, ...]], path: str = "<shapes>") -> MagiDiTConfig:
    """Infer a :class:`MagiDiTConfig` from key shapes (see the module docstring)."""
    need = ["x_embedder.weight", "t_embedder.mlp.0.weight", "y_embedder.y_proj_xattn.0.weight",
            "y_embedder.null_caption_embedding", "final_linear.linear.weight",
            _P + "self_attention.q_layernorm.weight",
            _P + "self_attention.linear_qkv.q.weight", _P + "self_attention.linear_qkv.k.weight",
            _P + "mlp.linear_fc1.weight", _P + "mlp.linear_fc2.weight"]
    ck.check_sizing(path, shapes, need, what="the config (pass cfg)")
    d_model, in_ch, pt, p, _ = shapes["x_embedder.weight"]  # [D, C, pT, p, p]
    d = shapes[_P + "self_attention.q_layernorm.weight"][0]
    ffn = shapes[_P + "mlp.linear_fc2.weight"][1]
    layers = 1 + max(int(k.split(".")[2]) for k in shapes if k.startswith("videodit_blocks.layers."))
    fields = {
        "hidden_size": d_model, "num_layers": layers, "kv_channels": d, "ffn_hidden_size": ffn,
        "num_attention_heads": shapes[_P + "self_attention.linear_qkv.q.weight"][0] // d,
        "num_query_groups": shapes[_P + "self_attention.linear_qkv.k.weight"][0] // d,
        "in_channels": in_ch, "out_channels": shapes["final_linear.linear.weight"][0] // (pt * p * p),
        "patch_size": p, "t_patch_size": pt,
        "cond_hidden_ratio": shapes["t_embedder.mlp.0.weight"][0] / d_model,
        "caption_channels": shapes["y_embedder.y_proj_xattn.0.weight"][1],
        "caption_max_length": shapes["y_embedder.null_caption_embedding"][0],
        "gated_linear_unit": shapes[_P + "mlp.linear_fc1.weight"][0] == 2 * ffn,
    }
    if "spatial_embedding" in shapes:  # the embedded world's addition (MagiDiTConfig.spatial_grid)
        fields["spatial_grid"] = tuple(shapes["spatial_embedding"][:2])
    for name, preset in (("MAGI-1 4.5B", MagiDiTConfig.magi_4_5b()), ("MAGI-1 24B", MagiDiTConfig.magi_24b())):
        if all(getattr(preset, k) == val for k, val in fields.items() if k != "num_layers"):
            # a release's shapes with fewer layers: its last layers are missing, not a smaller model
            ck.check_layer_count(path, layers, name, preset.num_layers, "videodit_blocks.layers.",
                                 hint="pass cfg (or a config.json) to load a model that has fewer layers")
            if layers == preset.num_layers:
                return preset
    fields["null_caption_tokens"] = min(50, fields["caption_max_length"])  # MAGI's 50, capped
    try:
        return MagiDiTConfig(**fields)
    except ConfigError as err:
        raise CheckpointError(path, f"shapes give no valid config ({err})") from err


def _config_from_doc(doc: Any, where: str) -> MagiDiTConfig:
    fields = ck.parse_json(doc, where, "the config entry") if isinstance(doc, str) else doc
    if not isinstance(fields, Mapping):
        raise CheckpointError(where, f"config entry is a {type(fields).__name__}, not an object of "
                                     "MagiDiTConfig fields")
    try:
        return MagiDiTConfig(**fields)
    except (ValueError, TypeError) as err:  # ConfigError is a ValueError
        raise CheckpointError(where, f"config entry is not a valid MagiDiTConfig ({err})") from err


def _find_config(cfg: MagiDiTConfig | None, index_meta: Mapping[str, Any], file_meta: Mapping[str, str],
                 folder: Path, shapes: Mapping[str, tuple[int, ...]], path: str) -> tuple[MagiDiTConfig, str]:
    if cfg is not None:
        return cfg, "argument"
    for meta in (index_meta, file_meta):
        if "config" in meta:
            return _config_from_doc(meta["config"], path), "metadata"
    for f in (folder / "config.json", folder.parent / "config.json"):
        if f.exists():
            return _config_from_doc(ck.read_json(f), str(f)), "config.json"
    return config_from_shapes(shapes, path), "shapes"


def _expected_shapes(cfg: MagiDiTConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        net = MagiDiT(cfg)
    return {k: tuple(t.shape) for k, t in net.state_dict().items()}


# ------------------------------------------------------------------------------------------------
# public entry points
# ------------------------------------------------------------------------------------------------


def load_magi_checkpoint(path: str | Path, cfg: MagiDiTConfig | None = None, *, distill: bool = False,
                         dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
                         ) -> tuple[MagiDiT, MagiCheckpointInfo]:
    """Load a MAGI DiT from a model folder (``inference_weight[.distill]/`` inside), a weight folder or one
    ``.safetensors`` file. Raises :class:`CheckpointError` listing every missing, unexpected and
    misshaped key before any tensor is read. ``dtype`` casts the weights (default: as stored)."""
    p = Path(path)
    files, index_meta, folder = _weight_files(p, distill)
    shapes, file_meta = _shapes(files)
    cfg, source = _find_config(cfg, index_meta, file_meta, folder, shapes, str(p))
    own = _expected_shapes(cfg)
    missing = sorted(k for k in own if k not in shapes)
    unexpected = sorted(k for k in shapes if k not in own)
    misshaped = sorted((k, shapes[k], own[k]) for k in own if k in shapes and shapes[k] != own[k])
    if missing or unexpected or misshaped:
        raise CheckpointError(str(p), f"does not fit a MAGI DiT ({source} config: {cfg.hidden_size} wide, "
                                      f"{cfg.num_layers} layers)", missing=missing, unexpected=unexpected,
                              misshaped=misshaped)
    from safetensors.torch import load_file

    with torch.device("meta"):
        net = MagiDiT(cfg)
    like = net.state_dict()
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        part = load_file(str(f), device=str(device))
        ck.check_weights(f, part, like)  # float and finite, before any cast
        for k, t in part.items():
            sd[k] = t if dtype is None else t.to(dtype)
    net.load_state_dict(sd, strict=True, assign=True)
    net.eval().requires_grad_(False)
    first = next(iter(sd.values()))
    meta = dict(index_meta) or {k: val for k, val in file_meta.items()}
    info = MagiCheckpointInfo(path=str(p), files=tuple(str(f) for f in files), config_source=source,
                              dtype=str(first.dtype).removeprefix("torch."), metadata=meta)
    return net, info


def save_magi_checkpoint(model: nn.Module, folder: str | Path, *, distill: bool = False, shards: int = 1,
                         metadata: Mapping[str, Any] | None = None, force: bool = False) -> Path:
    """Write ``folder/inference_weight[.distill]/`` in the released layout: one ``model.safetensors``
    (``shards == 1``) or ``shards`` files ``model-0000X-of-0000N.safetensors`` balanced by bytes with
    ``model.safetensors.index.json``. The config goes into the metadata. Returns the weight folder.
    An existing weight folder is refused unless ``force`` (then replaced whole); the folder is
    written under a temporary name and renamed into place when complete."""
    from accelframe.outputs import atomic_path, check_folder

    if not isinstance(shards, int) or shards < 1:
        raise ConfigError("save_magi_checkpoint", "shards", shards, "an integer >= 1")
    out = Path(folder) / weight_folder_name(distill)
    if out.exists() and not force:
        raise ConfigError("save_magi_checkpoint", "folder", str(out), "a weight folder that does not exist yet "
                                                                      "(or force=True to replace it)")
    check_folder(out, (), owner="save_magi_checkpoint", field="folder")  # not a file; its parent created
    with atomic_path(out, folder=True, merge=False) as tmp:
        _write_magi_checkpoint(model, tmp, shards, metadata)
    return out


def _write_magi_checkpoint(model: nn.Module, out: Path, shards: int, metadata: Mapping[str, Any] | None) -> None:
    from safetensors.torch import save_file

    sd = {k: t.detach().to("cpu").contiguous().clone() for k, t in model.state_dict().items()}
    cfg = getattr(model, "cfg", None)
    meta: dict[str, Any] = dict(metadata or {})
    if isinstance(cfg, MagiDiTConfig):
        meta["config"] = json.dumps(attrs.asdict(cfg))
    file_meta = {"format": "pt"}  # safetensors metadata holds strings only
    file_meta |= {k: val if isinstance(val, str) else json.dumps(val) for k, val in meta.items()}
    if shards == 1:
        save_file(sd, str(out / SINGLE), metadata=file_meta)
        return
    keys = list(sd)
    total = sum(t.numel() * t.element_size() for t in sd.values())
    per = math.ceil(total / shards)
    groups: list[list[str]] = [[] for _ in range(shards)]
    acc = 0
    for k in keys:  # keep key order; start a new shard when this one has its share
        i = min(acc // per, shards - 1) if per else 0
        groups[i].append(k)
        acc += sd[k].numel() * sd[k].element_size()
    weight_map: dict[str, str] = {}
    for i, group in enumerate(groups):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: sd[k] for k in group}, str(out / name), metadata=file_meta)
        weight_map.update({k: name for k in group})
    index = {"metadata": {"total_size": total, **meta}, "weight_map": weight_map}
    (out / INDEX).write_text(json.dumps(index, indent=2))


__all__ = ["MagiCheckpointInfo", "config_from_shapes", "load_magi_checkpoint", "save_magi_checkpoint",
           "weight_folder_name"]
