"""What every world trainer shares: seeding, the optimiser schedule, the loss log, the progress bar,
and writing the weights with their training record.

A trainer writes ``NAME.safetensors`` (the weights; its metadata holds ``config`` and ``training`` as
JSON) and ``NAME.log.json`` (the loss every ``log_every`` steps). :mod:`accelframe_adapters.world.training.cards`
turns both into the model card.
"""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import attrs
import torch

from accelframe.errors import ConfigError
from accelframe.progress import progress_bar
# what a loader reads back is runtime, beside the loaders; trainers and cards use it from there
from accelframe_adapters.world.models import read_metadata


def at_least(owner: str, field: str, value: object, minimum: int) -> int:
    """``value`` when it is an int (not a bool) of at least ``minimum``; else a :class:`ConfigError`
    naming ``field``. The one check of every count and seed the world's commands take."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(owner, field, value, f"an int >= {minimum}")
    return value


@attrs.frozen(kw_only=True)
class TrainSettings:
    """A trainer's settings; the CPU threads are the command's (the global ``--threads``)."""

    steps: int
    batch: int
    lr: float
    seed: int = 0
    warmup: int = 100
    log_every: int = 25

    def __attrs_post_init__(self) -> None:
        for name, minimum in (("steps", 1), ("batch", 1), ("log_every", 1), ("seed", 0), ("warmup", 0)):
            at_least("TrainSettings", name, getattr(self, name), minimum)
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not 0 < self.lr < 1:
            raise ConfigError("TrainSettings", "lr", self.lr, "a learning rate in (0, 1)")


def lr_at(step: int, s: TrainSettings) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    done = (step - s.warmup) / max(s.steps - s.warmup, 1)
    return s.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(done, 1.0))))


def log_path(weights: str | Path) -> Path:
    """The loss log written beside a weights file: ``NAME.log.json`` for ``NAME.safetensors``."""
    return Path(weights).with_suffix(".log.json")


def check_out(out: str | Path, force: bool) -> Path:
    """The weights path, checked before training: it and the loss log beside it are refused when
    they exist unless ``force`` (nothing is overwritten silently); the folder is created."""
    from accelframe.outputs import check_output

    p = check_output(out, owner="train", field="out", force=force, suffixes=(".safetensors",))
    check_output(log_path(p), owner="train", field="out", force=force)
    return p


def check_data(data: str | Path | None) -> None:
    """Before training: the folder of a ``--data`` cache is created (an existing file is read, and
    replaced only when :func:`refuse_data` allows)."""
    from accelframe.outputs import check_output

    if data is not None:
        check_output(data, owner="world train", field="data", force=True)


def refuse_data(data: str | Path, force: bool, why: str) -> None:
    """An existing ``--data`` file that is not a cache this run can use: refused unless ``force``
    (it may be an unrelated file), before any clip is encoded."""
    if not force:
        raise ConfigError("world train", "data", str(data),
                          f"a cache of encoded clips for this run, or a path that does not exist yet "
                          f"(this file {why}; pass --force to replace it)")


def read_data(data: str | Path, force: bool) -> dict[str, Any] | None:
    """An existing ``--data`` cache, checked before use: a weights-only PyTorch dict with ``latents``
    (finite floats ``[N, F, z, h, w]``), ``prompts`` (N strings) and ``seeds`` (N ints). A file that
    is not one raises a :class:`CheckpointError` naming it, unless ``force`` (None: it is replaced)."""
    from accelframe.errors import CheckpointError
    from accelframe_adapters import checkpoints as ck

    not_cache = "is not a cache of encoded clips (pass --force to replace it)"
    try:
        ds = ck.load_torch(data)
        if not isinstance(ds, dict):
            raise CheckpointError(str(data), f"{not_cache}: it holds a {type(ds).__name__}, not a dict")
        latents = ds.get("latents")
        if not isinstance(latents, torch.Tensor) or latents.dim() != 5 or not latents.shape[0]:
            got = ("no 'latents'" if latents is None else f"'latents' of shape {tuple(latents.shape)}"
                   if isinstance(latents, torch.Tensor) else f"'latents' that are a {type(latents).__name__}")
            raise CheckpointError(str(data), f"{not_cache}: it holds {got}, not a tensor [N, F, z, h, w], N >= 1")
        ck.check_weights(data, {"latents": latents}, {"latents": torch.empty(0)}, problem=not_cache)
        n = latents.shape[0]
        for key, kind in (("prompts", str), ("seeds", int)):
            val = ds.get(key)
            if not isinstance(val, list) or len(val) != n or not all(isinstance(x, kind) for x in val):
                raise CheckpointError(str(data), f"{not_cache}: its {key!r} is not a list of {n} "
                                                 f"{kind.__name__}s (one per clip)")
    except CheckpointError:
        if force:
            return None
        raise
    return ds


def encoded_clips(data: str | Path | None, force: bool, clips_n: int, vae: str | Path,
                  build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A trainer's encoded clips: the ``--data`` cache when it holds ``clips_n`` clips encoded by the
    VAE ``vae``, else ``build()``, then written to ``data`` (whole) when given. A file there that is
    not such a cache is refused unless ``force`` (:func:`read_data`, :func:`refuse_data`), before
    anything is encoded."""
    from accelframe_adapters import checkpoints as ck

    vae_id = ck.read_tensors(vae)["conv2.bias"].sum().item()  # ties a data cache to its VAE
    if data is not None and Path(data).exists():
        ds = read_data(data, force)  # None: not a cache, replaced under --force
        if ds is not None:
            if len(ds["prompts"]) == clips_n and ds.get("vae_id") == vae_id:
                return ds
            refuse_data(data, force, f"is not a cache of {clips_n} clips encoded by this VAE")
    ds = build()
    ds["vae_id"] = vae_id
    if data is not None:
        save_data(data, ds)
    return ds


def save_data(data: str | Path, ds: dict[str, Any]) -> None:
    """Write a ``--data`` cache whole or not at all."""
    from accelframe.outputs import atomic_path

    with atomic_path(data) as tmp:
        torch.save(ds, str(tmp))


def run_loop(name: str, settings: TrainSettings, params: list[torch.nn.Parameter],
             step_fn: Callable[[int], dict[str, float]], *, quiet: bool = False,
             after_step: Callable[[], None] | None = None) -> dict[str, Any]:
    """Run ``settings.steps`` optimiser steps; ``step_fn(step)`` computes the losses (the first
    key is the one minimised, already backpropagated); ``after_step()`` runs after each update
    (a projection onto a constraint, a weight average). Returns the log."""
    opt = torch.optim.AdamW(params, lr=settings.lr, betas=(0.9, 0.99), weight_decay=0.0)
    log: dict[str, Any] = {"step": [], "time_s": []}
    running: dict[str, float] = {}
    start = time.perf_counter()
    with progress_bar(total=settings.steps, desc=f"train {name}", unit="step", quiet=quiet) as bar:
        for step in range(settings.steps):
            for group in opt.param_groups:
                group["lr"] = lr_at(step, settings)
            opt.zero_grad(set_to_none=True)
            losses = step_fn(step)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            if after_step is not None:
                after_step()
            for k, val in losses.items():
                running[k] = running.get(k, 0.0) + float(val)
            if (step + 1) % settings.log_every == 0 or step + 1 == settings.steps:
                n = (step % settings.log_every) + 1
                log["step"].append(step + 1)
                log["time_s"].append(round(time.perf_counter() - start, 2))
                for k, total in running.items():
                    log.setdefault(k, []).append(total / n)
                bar.set_postfix({k: f"{total / n:.4f}" for k, total in list(running.items())[:2]})
                if bar.disable and not quiet and (step + 1) % max(settings.steps // 10, 1) < settings.log_every:
                    # no terminal for the bar (a log file, CI): a plain line every tenth of the run
                    losses_now = ", ".join(f"{k} {total / n:.4f}" for k, total in running.items())
                    print(f"train {name}: step {step + 1}/{settings.steps}, {losses_now}, "
                          f"{time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
                running = {}
            bar.update(1)
    log["wall_s"] = round(time.perf_counter() - start, 1)
    return log


def file_digest(path: str | Path) -> str:
    """The first 16 hex digits of a file's SHA-256: names one version of a weights file (the cards
    print it for every file, and a distillation's record for its teacher)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def machine(device: torch.device | None = None) -> dict[str, Any]:
    """What a training record says of the machine; ``device``: where the model trained, when not
    the CPU (a CUDA device is named)."""
    out = {"torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
           "processor": platform.machine()}
    if device is not None and device.type != "cpu":
        out["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    return out


def save(path: Path, tensors: dict[str, torch.Tensor], *, config: dict[str, Any], training: dict[str, Any],
         log: dict[str, Any], dtype: torch.dtype = torch.float32) -> None:
    """Weights (stored as ``dtype``) with their config and training record in the safetensors
    metadata, and the loss log beside."""
    from safetensors.torch import save_file

    from accelframe.outputs import atomic_paths

    meta = {"config": json.dumps(config, sort_keys=True), "training": json.dumps(training, sort_keys=True)}
    with atomic_paths([path, log_path(path)]) as (tmp, tmp_log):  # both renamed into place when complete
        save_file({k: t.detach().to("cpu", dtype).contiguous() for k, t in tensors.items()}, str(tmp), metadata=meta)
        tmp_log.write_text(json.dumps(log, indent=1))


def load_init(module: torch.nn.Module, config: dict[str, Any], init: str | Path, *, owner: str,
              what: str) -> dict[str, Any]:
    """Load the weights of an earlier run into ``module`` (to continue training it); its config must
    equal ``config``. Returns the record a continued run keeps: the file's name and its training.
    Trainers call it before any clip is encoded, so a bad ``--init`` costs nothing."""
    from accelframe.errors import CheckpointError
    from accelframe_adapters import checkpoints as ck

    if not Path(init).is_file():
        raise CheckpointError(str(init), "no such file" if not Path(init).exists() else
                              "is a folder, not a weights file written by a world trainer")
    meta = read_metadata(init)
    if meta.get("config") != json.loads(json.dumps(config)):
        raise ConfigError(owner, "init", str(init), f"weights of {what}'s config ({config})")
    ck.fit(module, ck.read_tensors(init), str(init), what=what)
    return {"file": Path(init).name, "training": meta.get("training", {})}


def batches(seed: int) -> Iterator[int]:
    """Per-step seeds of a training run (one integer stream, so a run is reproducible from ``seed``)."""
    g = torch.Generator().manual_seed(seed)
    while True:
        yield int(torch.randint(0, 2**31 - 1, (1,), generator=g))


__all__ = ["TrainSettings", "at_least", "batches", "check_data", "check_out", "encoded_clips", "file_digest",
           "load_init", "log_path", "lr_at", "machine", "read_data", "refuse_data", "run_loop", "save", "save_data"]
