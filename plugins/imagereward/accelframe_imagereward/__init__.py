"""ImageReward as an accelframe scorer: the ``image-reward`` package behind the name ``imagereward``.

ImageReward (Xu et al., 2023) scores how well an image matches a prompt as people would judge it:
BLIP's ViT-L encodes the image, a BERT text encoder cross-attends from the prompt to the image
patches, and an MLP maps the first token to one standardised number. This plugin registers it as a
scorer that block policies can ask for by name::

    scorer = registry.get("scorer", "imagereward").factory(
        checkpoint="ImageReward.pt", med_config="med_config.json", tokenizer="bert-base-uncased/")
    rewards = scorer(frames, prompts)  # frames [B, T, 3, H, W] in [0, 1] -> [B, T]

Importing this module imports neither ImageReward nor its dependencies: that happens when the
factory builds a scorer, after its arguments were checked. The package needs pins that do not fit
accelframe's main environment (see README.md beside this package).
"""

from __future__ import annotations

from typing import Callable

from accelframe import hookimpl
from accelframe_imagereward.compat import ImageRewardUnavailable, import_imagereward
from accelframe_imagereward.preprocessing import CLIP_MEAN, CLIP_STD, IMAGE_SIZE, preprocess
from accelframe_imagereward.scorer import ImageRewardScorer, load_scorer

__version__ = "0.1.0"
NAME = "imagereward"


@hookimpl
def accelframe_register_scorers(register: Callable[..., None]) -> None:
    register(NAME, load_scorer,
             description="ImageReward (BLIP ViT-L + MLP), a human-preference reward per frame, from local "
                         "files: checkpoint=ImageReward.pt, med_config=med_config.json, tokenizer=FOLDER")


__all__ = ["CLIP_MEAN", "CLIP_STD", "IMAGE_SIZE", "NAME", "ImageRewardScorer", "ImageRewardUnavailable",
           "accelframe_register_scorers", "import_imagereward", "load_scorer", "preprocess", "__version__"]
