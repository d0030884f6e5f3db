"""Pluggable text encoders: a tiny built-in word-level encoder, and UMT5 through transformers.

Both return what the Wan DiT's ``text_embedding`` expects: ``[B, text_len, text_dim]`` with the
rows after the prompt's tokens set to zero (Wan pads UMT5 states with zeros to 512 tokens).

- :class:`WordEncoder` lowercases, splits on non-letters and looks each word up in a fixed
  vocabulary (unknown words share one row), then adds a learned position embedding. It is the
  encoder of the embedded tiny world, where prompts are short and the vocabulary is closed.
- :class:`UMT5Encoder` loads ``UMT5EncoderModel`` and its tokenizer from a local folder (the
  optional ``umt5`` extra installs ``transformers``); nothing is downloaded.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Protocol, Sequence

import torch
from torch import nn

from accelframe.errors import ConfigError

# Words of the embedded world's prompts ("a red circle moves left on a blue background").
DEFAULT_VOCAB: tuple[str, ...] = (
    "a", "an", "the", "on", "over", "in", "and", "with", "of", "to", "is", "moves", "move", "moving",
    "slides", "bounces", "stays", "still", "left", "right", "up", "down", "slowly", "quickly",
    "red", "green", "blue", "yellow", "white", "black", "orange", "purple", "cyan", "magenta", "gray",
    "circle", "square", "triangle", "star", "ring", "bar", "background", "small", "large", "big",
)


class TextEncoder(Protocol):
    text_dim: int
    text_len: int

    def __call__(self, prompts: Sequence[str]) -> torch.Tensor:
        """``[B, text_len, text_dim]`` float32 states, zero after each prompt's tokens."""


def words(prompt: str) -> list[str]:
    return re.findall(r"[a-z]+", prompt.lower())


class WordEncoder(nn.Module):
    """Word-level embedding plus a learned position embedding (keys ``word_embedding.weight``,
    ``position_embedding.weight``). Row 0 is the unknown word."""

    def __init__(self, text_dim: int, text_len: int, vocab: Sequence[str] = DEFAULT_VOCAB) -> None:
        super().__init__()
        self.text_dim, self.text_len = text_dim, text_len
        self.vocab = tuple(vocab)
        self.index = {w: i + 1 for i, w in enumerate(self.vocab)}
        self.word_embedding = nn.Embedding(len(self.vocab) + 1, text_dim)
        self.position_embedding = nn.Embedding(text_len, text_dim)

    def unknown_words(self, prompt: str) -> list[str]:
        """The prompt's words outside the vocabulary (each once, in order); they all embed as one row."""
        return list(dict.fromkeys(w for w in words(prompt) if w not in self.index))

    def ids(self, prompt: str) -> list[int]:
        return [self.index.get(w, 0) for w in words(prompt)][: self.text_len]

    @torch.no_grad()
    def forward(self, prompts: Sequence[str]) -> torch.Tensor:
        dev = self.word_embedding.weight.device
        out = torch.zeros(len(prompts), self.text_len, self.text_dim, device=dev)  # [B, L, D]
        for b, p in enumerate(prompts):
            ids = torch.tensor(self.ids(p), dtype=torch.long, device=dev)
            n = ids.numel()
            if n:
                out[b, :n] = self.word_embedding(ids) + self.position_embedding.weight[:n]
        return out


class UnknownWordsWarning(UserWarning):
    """A prompt holds words the word-level encoder does not know (they all read as one unknown word)."""

    def __init__(self, prompt: str, unknown: Sequence[str], vocab: Sequence[str]) -> None:
        self.prompt, self.unknown = prompt, list(unknown)
        super().__init__(f"prompt {prompt!r}: the word encoder does not know {', '.join(map(repr, unknown))}; "
                         f"they all read as one unknown word. Known words: {' '.join(vocab)}")


class UMT5Encoder:
    """UMT5 from a local folder (``config.json``, weights, tokenizer files)."""

    def __init__(self, path: str | Path, text_len: int = 512, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        try:
            from transformers import AutoTokenizer, UMT5EncoderModel
        except ImportError as err:  # optional extra
            raise ConfigError("text_encoder", "path", str(path),
                              "a UMT5 folder needs the optional 'umt5' extra (transformers)") from err
        if not Path(path).is_dir():
            raise ConfigError("text_encoder", "path", str(path), "a local folder holding UMT5")
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = UMT5EncoderModel.from_pretrained(str(path), local_files_only=True,
                                                      torch_dtype=dtype).to(device).eval()
        self.text_len = text_len
        self.text_dim = self.model.config.d_model
        self.device = device

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str]) -> torch.Tensor:
        tok = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=self.text_len,
                             add_special_tokens=True, return_tensors="pt")
        ids, mask = tok.input_ids.to(self.device), tok.attention_mask.to(self.device)
        states = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # [B, L, D]
        return (states * mask.unsqueeze(-1)).float()  # zero after each prompt, as Wan pads


__all__ = ["DEFAULT_VOCAB", "TextEncoder", "UMT5Encoder", "UnknownWordsWarning", "WordEncoder", "words"]
