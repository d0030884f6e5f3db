"""accelframe: stackable acceleration policies for autoregressive video diffusion.

The public surface: :class:`Pipeline` to compose an adapter, a drafter and policies; ``hookimpl``
to write plugins; the types of :mod:`accelframe.types`; the errors of :mod:`accelframe.errors`.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

# The names below load on first use (PEP 562): ``import accelframe`` and the CLI's start-up
# (``accelframe --help``, plugin registration) import no torch.
_TYPES = (
    "AppliesTo", "BatchContext", "BatchEntry", "BatchPlan", "BlockContext", "BlockVerdict", "CallSite",
    "Iteration", "KVAction", "KVContext", "KVWrite", "Mode", "ModelCall", "ModelRole", "NoiseContext",
    "Request", "Role", "StepContext", "StepDecision", "UnitSpan", "Verdict",
)
_LAZY = {"Result": "accelframe.engine", "Pipeline": "accelframe.pipeline", "create_hooks": "accelframe.plugins",
         "hookimpl": "accelframe.hookspecs", **dict.fromkeys(_TYPES, "accelframe.types")}

if TYPE_CHECKING:
    from accelframe.engine import Result
    from accelframe.pipeline import Pipeline
    from accelframe.hookspecs import hookimpl
    from accelframe.plugins import create_hooks
    from accelframe.types import (
        AppliesTo,
        BatchContext,
        BatchEntry,
        BatchPlan,
        BlockContext,
        BlockVerdict,
        CallSite,
        Iteration,
        KVAction,
        KVContext,
        KVWrite,
        Mode,
        ModelCall,
        ModelRole,
        NoiseContext,
        Request,
        Role,
        StepContext,
        StepDecision,
        UnitSpan,
        Verdict,
    )


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
    elif not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        # a submodule (``accelframe.errors``): an attribute once imported, as when the names above
        # were imported eagerly
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module 'accelframe' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    import pkgutil

    return sorted({*globals(), *_LAZY, *(m.name for m in pkgutil.iter_modules(__path__))})


__version__ = "0.1.0"

__all__ = [
    "AppliesTo", "BatchContext", "BatchEntry", "BatchPlan", "BlockContext", "BlockVerdict", "CallSite",
    "Iteration", "KVAction", "KVContext", "KVWrite", "Mode", "ModelCall", "ModelRole",
    "NoiseContext", "Pipeline", "Request", "Result", "Role", "StepContext", "StepDecision",
    "UnitSpan", "Verdict", "create_hooks", "hookimpl", "__version__",
]
