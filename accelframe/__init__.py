"""accelframe: stackable acceleration policies for autoregressive video diffusion.

The public surface: :class:`Pipeline` to compose an adapter, a drafter and policies; ``hookimpl``
to write plugins; the types of :mod:`accelframe.types`; the errors of :mod:`accelframe.errors`.
"""

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

__version__ = "0.1.0"

__all__ = [
    "AppliesTo", "BatchContext", "BatchEntry", "BatchPlan", "BlockContext", "BlockVerdict", "CallSite",
    "Iteration", "KVAction", "KVContext", "KVWrite", "Mode", "ModelCall", "ModelRole",
    "NoiseContext", "Pipeline", "Request", "Result", "Role", "StepContext", "StepDecision",
    "UnitSpan", "Verdict", "create_hooks", "hookimpl", "__version__",
]
