"""Registers the model-family adapters through the entry-point group ``accelframe``.

Each family module defines its adapter class; this table names it. Factories and commands are
imported lazily (``accelframe.registry.lazy``; the CLI configures a command's options only when it
runs) so that registering, listing plugins and ``accelframe --help`` import no torch.

The embedded world hands its presets (``size="world"``, ``"world-drafter"``) to this registration,
which registers them in :mod:`accelframe_adapters.presets`: the adapters find them there and never
import the world.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from accelframe import hookimpl
from accelframe.registry import lazy
from accelframe_adapters import presets
from accelframe_adapters.world import presets as world_presets

# At import, not in a hook: an adapter built directly (``SelfForcingAdapter(size="world")``) finds
# them too (``accelframe_adapters/__init__`` imports this module). Each is built on first use.
for _family, _name, _factory in world_presets.PRESETS:
    presets.register_preset(_family, _name, _factory)


def _lazy(module: str, cls: str) -> Callable[..., Any]:
    return lazy(f"accelframe_adapters.{module}:{cls}")


FAMILIES: dict[str, tuple[Callable[..., object], str]] = {
    "self-forcing": (_lazy("wan.self_forcing", "SelfForcingAdapter"),
                     "Self-Forcing: few-step blocks of 3 latent frames on the Wan 2.1 DiT with a KV cache"),
    "krea-realtime": (_lazy("wan.krea", "KreaAdapter"),
                      "Krea Realtime: Self-Forcing's network with a KV cache rebuilt per block"),
    "skyreels-v2-df": (_lazy("wan.skyreels_df", "SkyReelsDFAdapter"),
                       "SkyReels-V2 diffusion forcing: per-frame noise levels, step matrix, UniPC"),
    "magi-1": (_lazy("magi.adapter", "MagiAdapter"),
               "MAGI-1: chunks of 6 latent frames denoised in a staged window of 4, packed KV cache"),
}


@hookimpl
def accelframe_register_adapters(register: Callable[..., None]) -> None:
    for name, (factory, description) in FAMILIES.items():
        register(name, factory, description=description)


@hookimpl
def accelframe_register_commands(register: Callable[..., None]) -> None:
    register("world", lazy("accelframe_adapters.world.training.cli:configure"),
             lazy("accelframe_adapters.world.training.cli:run"),
             help="the embedded tiny world: train its models, write model cards, render clips")


@hookimpl
def accelframe_register_scorers(register: Callable[..., None]) -> None:
    def world_reward(**kwargs: Any) -> Any:
        return importlib.import_module("accelframe_adapters.world.models").load_scorer(**kwargs)

    register("world-reward", world_reward,
             description="the embedded world's frame reward (ImageReward's shape, trained on the world)")

    def world_quality() -> Any:
        return importlib.import_module("accelframe_adapters.world.quality").MeasureScorer()

    register("world-quality", world_quality,
             description="the embedded world's quality measure on the scored frames as one clip (a reference "
                         "for reward routers: it sees motion, not the frames before)")


@hookimpl
def accelframe_register_sources(register: Callable[..., None]) -> None:
    register("world", lazy("accelframe_adapters.world.source:WorldSource"),
             description="a clip of the embedded tiny world rendered from the stream's prompt")
