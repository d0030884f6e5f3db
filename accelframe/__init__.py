"""accelframe: stackable acceleration policies for autoregressive video diffusion.

The public surface: :class:`Pipeline` to compose an adapter, a drafter and policies; ``hookimpl``
to write plugins; the types of :mod:`accelframe.types`; the errors of :mod:`accelframe.errors`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# The names below load on first use (PEP 562): ``import accelframe`` and the CLI's start-up
# (``accelframe --help``, plugin registration) import no torch.
_TYPES = (
    "AppliesTo", "BatchContext", "BatchEntry", "BatchPlan", "BlockContext", "BlockVerdict", "CallSite",
    "Iteration", "KVAction", "KVContext", "KVWrite", "Mode", "ModelCall", "ModelRole", "NoiseContext",
    "Request", "Role", "StepContext", "StepDecision", "UnitSpan", "Verdict",
)
_LAZY = {"Result": "accelframe.engine", "Pipeline": "accelframe.pipeline", "create_hooks": "accelframe.plugins",
         "hookimpl": "accelframe.plugins", **dict.fromkeys(_TYPES, "accelframe.types")}

if TYPE_CHECKING:
    from accelframe.engine import Result
    from accelframe.pipeline import Pipeline
    from accelframe.plugins import create_hooks, hookimpl
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
    if module is None:
        raise AttributeError(f"module 'accelframe' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__version__ = "0.1.0"

__all__ = [
    "AppliesTo", "BatchContext", "BatchEntry", "BatchPlan", "BlockContext", "BlockVerdict", "CallSite",
    "Iteration", "KVAction", "KVContext", "KVWrite", "Mode", "ModelCall", "ModelRole",
    "NoiseContext", "Pipeline", "Request", "Result", "Role", "StepContext", "StepDecision",
    "UnitSpan", "Verdict", "create_hooks", "hookimpl", "__version__",
]
