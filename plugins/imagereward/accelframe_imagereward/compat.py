"""Importing the ``image-reward`` package (``import ImageReward``) without side effects on the process.

Three things happen here, each only when needed:

- **offline**: ``HF_HUB_OFFLINE`` and ``TRANSFORMERS_OFFLINE`` are set to 1 before the first import,
  so that huggingface_hub and transformers, which read them when they are imported, can never
  download anything in this process. The plugin only ever loads local files.
- **warning filters**: ImageReward's ``models/BLIP/blip.py`` calls ``warnings.filterwarnings("ignore")``
  when it is imported, which would silence every warning of the process (accelframe's policy
  fallback warnings included). The import runs inside ``warnings.catch_warnings()``, which puts the
  filters back afterwards.
- **torchvision without its C++ ops**: PyPI's torchvision wheels are CUDA builds; with the CPU build
  of torch their compiled extension (``torchvision/_C.so``: nms, roi_align, image decoding) cannot be
  loaded. torchvision tolerates that, except that ``torchvision/_meta_registrations.py`` registers
  fake kernels for ``torchvision::nms`` and ``torchvision::qnms`` unconditionally, and that fails for
  operators that were never defined ("operator torchvision::nms does not exist"), which breaks
  ``import torchvision`` and so ``import timm`` and ``import ImageReward``. When, and only when, the
  import of torchvision fails with exactly that error, :func:`prepare_torchvision` defines the two
  operator schemas (no kernels) and imports torchvision again. Its pure-Python parts (transforms,
  which timm and ImageReward use) then work; calling one of its C++ ops still raises torchvision's
  own "Couldn't load custom C++ ops" error. Nothing ImageReward scores with uses them.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import warnings
from types import ModuleType
from typing import Any

from accelframe.errors import AccelframeError

README = "plugins/imagereward/README.md"
OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")

# the schemas torchvision registers fake kernels for without checking that its extension loaded
_UNGUARDED_OPS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
# the torch.library.Library holding the schemas: definitions live as long as this object
_schema_library: Any = None


class ImageRewardUnavailable(AccelframeError, ImportError):
    """The ``image-reward`` package (``import ImageReward``) cannot be imported in this environment."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        super().__init__(
            f"the imagereward scorer needs the image-reward package (import ImageReward), which failed to "
            f"import: {type(error).__name__}: {error}. It needs old pins (timm 0.6.13, transformers 4.x) "
            f"that do not fit accelframe's main environment, so it lives in an environment of its own: "
            f"see {README} for the install commands.")


def _torchvision_op_error(exc: BaseException) -> bool:
    text = str(exc)
    return "torchvision::" in text and "does not exist" in text


def prepare_torchvision() -> bool:
    """Make ``import torchvision`` work when its C++ extension cannot be loaded (see the module doc).

    Returns True when the operator schemas had to be defined, False when torchvision imported as it
    is (or is already imported, or is not installed: then the import error is ImageReward's to report).
    """
    global _schema_library
    if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is None:
        return False
    try:
        importlib.import_module("torchvision")
        return False
    except RuntimeError as exc:
        if not _torchvision_op_error(exc):
            raise
    import torch

    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]  # the half-imported package; its failed registration left nothing behind
    if _schema_library is None:
        lib = torch.library.Library("torchvision", "FRAGMENT")
        for schema in _UNGUARDED_OPS:
            lib.define(schema)
        _schema_library = lib
    importlib.import_module("torchvision")
    return True


def import_imagereward() -> ModuleType:
    """``import ImageReward``, offline and with the process's warning filters kept; raises
    :class:`ImageRewardUnavailable` when it cannot be imported."""
    module = sys.modules.get("ImageReward")
    if module is not None:
        return module
    try:
        found = importlib.util.find_spec("ImageReward") is not None
    except (ImportError, ValueError):
        found = False
    if not found:  # not installed: leave torchvision and the environment alone
        raise ImageRewardUnavailable(ModuleNotFoundError("No module named 'ImageReward'"))
    for name in OFFLINE_ENV:
        os.environ[name] = "1"
    try:
        with warnings.catch_warnings():
            # clip (imported by ImageReward) warns that pkg_resources is deprecated
            warnings.filterwarnings("ignore", message=".*pkg_resources.*")
            prepare_torchvision()
            return importlib.import_module("ImageReward")
    except ImportError as exc:
        raise ImageRewardUnavailable(exc) from exc
    except RuntimeError as exc:  # a torchvision/torch mismatch other than the one handled above
        raise ImageRewardUnavailable(exc) from exc


__all__ = ["ImageRewardUnavailable", "import_imagereward", "prepare_torchvision"]
