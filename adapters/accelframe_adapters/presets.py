"""Named model presets: trained model sets an adapter family runs by its ``size`` knob.

Whoever ships trained models registers them here; the adapters ask by family and name. A preset
gives trained models to a size the family already lists (``wan.common.SIZES``,
``magi.adapter.SIZES``, which the ``size`` knob is validated against); it adds no new size. The embedded
world hands its presets (``world``, ``world-drafter``) to the adapters' registration
(:mod:`accelframe_adapters.plugin`), so no adapter imports the world. A preset is registered as a
factory and built on first use, so registering one imports no torch (``accelframe --help`` stays
light).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import attrs

from accelframe import validators as v
from accelframe.errors import ConfigError, DuplicateNameError

FAMILIES = ("wan", "magi")  # "wan": the Wan 2.1 families (self-forcing, krea, skyreels); "magi": magi-1


@attrs.frozen(kw_only=True)
class Preset:
    """What an adapter needs to run one trained model set. The callables are read when an adapter
    loads or measures, so they may import torch-heavy modules."""

    name: str  # the ``size`` value that selects it
    family: str = attrs.field(validator=v.one_of(*FAMILIES))
    latent_frames: int  # the clip length the models were trained on: a request may not reach beyond it
    frame_size: tuple[int, int]  # (height, width) in pixels the models were trained on
    dit_config: Callable[[], Any]  # the DiT's config, without reading any weights
    # wan: load(device=, dtype=) -> the DiT in eval mode; magi: load(device=) -> (DiT, VAE, text encoder)
    load: Callable[..., Any]
    # wan: the shipped weights file of a part the adapter loads itself ("vae", "text"); a missing one raises
    weights_file: Callable[[str], str] | None = None
    # per adapter name, the knobs it takes by default with these models (the user's values win)
    defaults: Mapping[str, Mapping[str, Any]] = attrs.field(factory=dict)
    # (frames [B, T, 3, H, W], prompts, **family options) -> one dict per clip (the adapter's
    # measure_quality), and one line for a person per dict (None: nothing to say)
    measure_quality: Callable[..., list[dict[str, Any]]] | None = None
    describe_quality: Callable[[dict[str, Any]], str | None] | None = None


_factories: dict[tuple[str, str], Callable[[], Preset]] = {}
_built: dict[tuple[str, str], Preset] = {}


def register_preset(family: str, name: str, factory: Callable[[], Preset]) -> None:
    """Make ``name`` a preset of ``family``, built by ``factory()`` on first use. Registering the same
    factory again does nothing; another factory for a taken name raises."""
    if family not in FAMILIES:
        raise ConfigError("register_preset", "family", family, "one of " + ", ".join(map(repr, FAMILIES)))
    key = (family, name)
    known = _factories.get(key)
    if known is not None and known is not factory:
        raise DuplicateNameError(f"{family} preset", name, repr(known), repr(factory))
    _factories[key] = factory


def is_preset(family: str, name: str) -> bool:
    """Whether ``name`` is a registered preset of ``family`` (builds nothing)."""
    return (family, name) in _factories


def preset(family: str, name: str) -> Preset | None:
    """The preset ``name`` of ``family``, built once; None when no one registered it."""
    key = (family, name)
    if key not in _built:
        factory = _factories.get(key)
        if factory is None:
            return None
        made = factory()
        if not isinstance(made, Preset) or (made.family, made.name) != key:
            raise ConfigError("register_preset", "factory", factory,
                              f"a callable that returns the Preset {name!r} of family {family!r}")
        _built[key] = made
    return _built[key]


def names(family: str) -> tuple[str, ...]:
    """The registered presets of ``family``, in registration order."""
    return tuple(n for f, n in _factories if f == family)


__all__ = ["FAMILIES", "Preset", "is_preset", "names", "preset", "register_preset"]
