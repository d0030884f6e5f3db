"""The ``imagereward`` scorer: ImageReward's reward of every frame of a batch of clips.

:func:`load_scorer` is the factory the plugin registers. It checks its arguments before anything is
imported or read, imports the ``image-reward`` package (see :mod:`accelframe_imagereward.compat`),
and builds the network through the package's own loader ``ImageReward.load(checkpoint, device,
med_config=...)``. The only thing changed on the way is where BLIP's tokenizer comes from:
``ImageReward.models.BLIP.blip.init_tokenizer`` asks ``BertTokenizer.from_pretrained("bert-base-uncased")``
(a hub download); while the model is built, the name ``BertTokenizer`` in that module is swapped for
:class:`LocalVocabulary`, which loads the ``tokenizer`` folder the user gave with
``local_files_only=True``. The package's own ``init_tokenizer`` still adds its ``[DEC]`` and ``[ENC]``
tokens.

:class:`ImageRewardScorer` scores frames the way ``ImageReward.score(prompt, image)`` does, but on
tensors and in batches: the prompt of each clip is tokenised once (35 tokens, padded), every frame
is preprocessed (:func:`accelframe_imagereward.preprocessing.preprocess`), encoded by BLIP's ViT-L, read
by the text encoder cross-attending to it, mapped to one number by the MLP head and standardised
with the model's mean and std.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import threading
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from accelframe.errors import CheckpointError, ConfigError
from accelframe_imagereward.compat import import_imagereward
from accelframe_imagereward.preprocessing import preprocess

OWNER = "imagereward"
TEXT_LEN = 35  # ImageReward.score tokenises with max_length=35
HIDDEN = 768  # ImageReward's MLP head reads 768 text features
RANGE_SLACK = 1e-4  # frames may leave [0, 1] by rounding only
FRAMES = "a float tensor [B, T, 3, H, W] with values in [0, 1]"
_swap_lock = threading.Lock()


# ---- arguments ----------------------------------------------------------------------------------


def _local_file(field: str, value: Any, what: str) -> str:
    allowed = f"the path of a local file: {what} (nothing is downloaded)"
    if value is None or isinstance(value, bool) or not isinstance(value, (str, Path)) or not str(value):
        raise ConfigError(OWNER, field, value, allowed)
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(OWNER, field, str(value), allowed + "; no such file")
    return str(path.resolve())  # absolute: ImageReward.load reads a bare model name as one to download


def _local_vocabulary(value: Any) -> str:
    allowed = ("the path of a local folder holding a BERT vocabulary (vocab.txt of bert-base-uncased) for BLIP's "
               "tokenizer (nothing is downloaded)")
    if value is None or isinstance(value, bool) or not isinstance(value, (str, Path)) or not str(value):
        raise ConfigError(OWNER, "tokenizer", value, allowed)
    path = Path(value).expanduser()
    if not path.is_dir():
        raise ConfigError(OWNER, "tokenizer", str(value), allowed + "; no such folder")
    if not (path / "vocab.txt").is_file():
        raise ConfigError(OWNER, "tokenizer", str(value), allowed + "; the folder has no vocab.txt")
    return str(path.resolve())


def _med_config(path: str) -> None:
    """The text encoder's config must be a JSON object with ImageReward's hidden size."""
    allowed = f"ImageReward's med_config.json: a BERT config (JSON object) with hidden_size {HIDDEN}"
    try:
        cfg = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(OWNER, "med_config", path, f"{allowed}; it does not read as JSON ({exc})") from None
    if not isinstance(cfg, dict):
        raise ConfigError(OWNER, "med_config", path, f"{allowed}; it holds a {type(cfg).__name__}")
    if cfg.get("hidden_size", HIDDEN) != HIDDEN:
        raise ConfigError(OWNER, "med_config", path, f"{allowed}; it says hidden_size {cfg['hidden_size']}")


def _options(device: Any, batch_size: Any) -> tuple[torch.device, int]:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(OWNER, "batch_size", batch_size, "an integer >= 1 (frames per forward pass)")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(OWNER, "device", device, "a torch device such as 'cpu' or 'cuda:0'") from None
    return dev, batch_size


# ---- loading ------------------------------------------------------------------------------------


class LocalVocabulary:
    """Stands in for ``transformers.BertTokenizer`` inside ImageReward's ``init_tokenizer``: whatever
    name it is asked for, the tokenizer is read from ``folder``, with ``local_files_only=True``."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.asked: list[str] = []

    def from_pretrained(self, name: str, *args: Any, **kwargs: Any) -> Any:
        from transformers import BertTokenizer

        self.asked.append(name)
        return BertTokenizer.from_pretrained(self.folder, local_files_only=True)


@contextlib.contextmanager
def local_tokenizer(folder: str) -> Iterator[LocalVocabulary]:
    """While active, BLIP's ``init_tokenizer`` reads its vocabulary from ``folder``."""
    blip = importlib.import_module("ImageReward.models.BLIP.blip")
    vocab = LocalVocabulary(folder)
    with _swap_lock:
        saved = blip.BertTokenizer
        blip.BertTokenizer = vocab
        try:
            yield vocab
        finally:
            blip.BertTokenizer = saved


def checkpoint_keys(path: str) -> set[str]:
    """The names in a ``torch.save``'d state dict, read without loading its tensors where possible."""
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # a legacy (non-zip) file cannot be memory-mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors have no common base
        raise CheckpointError(path, f"cannot be read as a torch.save'd state dict ({type(exc).__name__}: "
                                    f"{exc})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(path, "is not a state dict (a dict of tensors) of ImageReward's network")
    return set(state)


def load_model(checkpoint: str, med_config: str, tokenizer: str, device: torch.device) -> Any:
    """``ImageReward.load`` on local files only; its weights checked against the checkpoint's names."""
    ir = import_imagereward()
    keys = checkpoint_keys(checkpoint)
    # ImageReward.load prints "load checkpoint from ..." and "checkpoint loaded"
    with local_tokenizer(tokenizer), contextlib.redirect_stdout(io.StringIO()):
        try:
            model = ir.load(checkpoint, device=device, med_config=med_config)
        except OSError as exc:  # the tokenizer folder did not hold a usable vocabulary
            raise ConfigError(OWNER, "tokenizer", tokenizer, f"a folder BertTokenizer can read ({exc})") from exc
        except RuntimeError as exc:  # load_state_dict: tensors of another shape than the network's
            raise CheckpointError(checkpoint, f"does not fit ImageReward's network built from med_config "
                                              f"{med_config}: {exc}") from exc
    names = set(model.state_dict())
    # position_ids are a constant buffer (0, 1, 2, ...) that some saves leave out
    missing = sorted(k for k in names - keys if not k.endswith("position_ids"))
    if missing:
        raise CheckpointError(checkpoint, "lacks weights of ImageReward's network (the package loads with "
                                          "strict=False and would leave them random)", missing=missing)
    unused = sorted(keys - names)
    if unused:
        warnings.warn(f"checkpoint {checkpoint}: {len(unused)} entries ImageReward's network does not use "
                      f"(ignored, as the package does): {', '.join(unused[:5])}", stacklevel=3)
    words, size = len(model.blip.tokenizer), model.blip.text_encoder.config.vocab_size
    if words > size:
        raise ConfigError(OWNER, "tokenizer", tokenizer, f"a vocabulary of at most {size} tokens (med_config's "
                                                         f"vocab_size); with BLIP's 2 extra tokens it has {words}")
    return model


def load_scorer(*, checkpoint: Any = None, med_config: Any = None, tokenizer: Any = None,
                device: Any = "cpu", batch_size: Any = 16) -> ImageRewardScorer:
    """The ``imagereward`` scorer from local files; every argument is checked before anything is loaded.

    ``checkpoint``: ImageReward's state dict (``ImageReward.pt``); ``med_config``: its ``med_config.json``;
    ``tokenizer``: a folder with bert-base-uncased's ``vocab.txt``; ``batch_size``: frames per forward.
    """
    ckpt = _local_file("checkpoint", checkpoint, "ImageReward's weights, a torch.save'd state dict such as "
                                                 "ImageReward.pt")
    cfg = _local_file("med_config", med_config, "the BLIP text encoder's BERT config, ImageReward's "
                                                "med_config.json")
    vocab = _local_vocabulary(tokenizer)
    dev, batch = _options(device, batch_size)
    _med_config(cfg)
    return ImageRewardScorer(load_model(ckpt, cfg, vocab, dev), device=dev, batch_size=batch)


# ---- scoring ------------------------------------------------------------------------------------


class ImageRewardScorer:
    """An ImageReward model as an accelframe scorer: ``(frames [B, T, 3, H, W] in [0, 1], prompts) -> [B, T]``."""

    def __init__(self, model: Any, device: str | torch.device = "cpu", batch_size: int = 16) -> None:
        self.device, self.batch_size = _options(device, batch_size)
        self.model = model.to(self.device).eval()
        self.tokenizer = model.blip.tokenizer
        self.mean, self.std = float(model.mean), float(model.std)

    def tokenize(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask ``[len(prompts), 35]``, as ``ImageReward.score`` makes them."""
        text = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=TEXT_LEN,
                              return_tensors="pt")
        return text.input_ids.to(self.device), text.attention_mask.to(self.device)

    def rewards(self, pixels: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Standardised rewards ``[N]`` of preprocessed images ``[N, 3, 224, 224]`` and their prompts' tokens."""
        blip = self.model.blip
        image = blip.visual_encoder(pixels)  # [N, 1 + patches, 1024]
        image_mask = torch.ones(image.shape[:-1], dtype=torch.long, device=image.device)
        text = blip.text_encoder(ids, attention_mask=mask, encoder_hidden_states=image,
                                 encoder_attention_mask=image_mask, return_dict=True)
        reward = self.model.mlp(text.last_hidden_state[:, 0, :].float()).squeeze(-1)
        return (reward - self.mean) / self.std

    def check(self, frames: Any, prompts: Any) -> None:
        if not isinstance(frames, torch.Tensor):
            raise ConfigError(OWNER, "frames", type(frames).__name__, FRAMES)
        if frames.dim() != 5 or frames.shape[2] != 3 or not frames.is_floating_point():
            raise ConfigError(OWNER, "frames", f"{frames.dtype} {tuple(frames.shape)}", FRAMES)
        if frames.numel():
            lo, hi = frames.min().item(), frames.max().item()
            if not (lo >= -RANGE_SLACK and hi <= 1.0 + RANGE_SLACK):  # NaN fails both
                raise ConfigError(OWNER, "frames", f"values in [{lo:.4g}, {hi:.4g}]", FRAMES)
        if isinstance(prompts, str) or not isinstance(prompts, Sequence):
            raise ConfigError(OWNER, "prompts", prompts, "a sequence of strings, one per clip")
        if len(prompts) != frames.shape[0]:
            raise ConfigError(OWNER, "prompts", f"{len(prompts)} prompts",
                              f"one prompt per clip ({frames.shape[0]})")
        bad = [p for p in prompts if not isinstance(p, str)]
        if bad:
            raise ConfigError(OWNER, "prompts", bad[0], "a string")

    @torch.no_grad()
    def __call__(self, frames: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        self.check(frames, prompts)
        b, t, _, h, w = frames.shape
        if b * t == 0:
            return torch.zeros(b, t)
        ids, mask = self.tokenize(prompts)  # once per clip
        flat = frames.reshape(b * t, 3, h, w)
        clip = torch.arange(b, device=self.device).repeat_interleave(t)  # the clip of every frame
        out = []
        for i in range(0, b * t, self.batch_size):
            rows = clip[i:i + self.batch_size]
            pixels = preprocess(flat[i:i + self.batch_size].to(self.device).clamp(0.0, 1.0))
            out.append(self.rewards(pixels, ids[rows], mask[rows]))
        return torch.cat(out).view(b, t).float().cpu()


__all__ = ["ImageRewardScorer", "LocalVocabulary", "checkpoint_keys", "load_model", "load_scorer",
           "local_tokenizer"]
