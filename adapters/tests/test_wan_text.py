"""Text encoders: the built-in word encoder and UMT5 from a local folder (a tiny one made here)."""

from __future__ import annotations

import pytest
import torch

from accelframe.errors import ConfigError
from accelframe_adapters.wan.text import UMT5Encoder, WordEncoder, words


def test_word_encoder_pads_with_zeros_and_shares_the_unknown_row():
    torch.manual_seed(0)
    enc = WordEncoder(text_dim=6, text_len=5)
    assert words("A Red-circle, moves LEFT!") == ["a", "red", "circle", "moves", "left"]
    out = enc(["a red circle", "a zorblax"])
    assert out.shape == (2, 5, 6)
    assert torch.equal(out[0, 3:], torch.zeros(2, 6)) and torch.equal(out[1, 2:], torch.zeros(3, 6))
    assert enc.ids("zorblax quux") == [0, 0]
    assert torch.equal(out[0, 0], out[1, 0])  # same word, same position


def _tiny_umt5(folder, d_model: int = 24):
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "a": 3, "red": 4, "circle": 5}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                         unk_token="<unk>").save_pretrained(folder)
    cfg = transformers.UMT5Config(vocab_size=8, d_model=d_model, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                                  relative_attention_num_buckets=8)
    torch.manual_seed(0)
    transformers.UMT5EncoderModel(cfg).save_pretrained(folder)


def test_umt5_from_a_local_folder_zeroes_padding(tmp_path):
    _tiny_umt5(tmp_path)
    enc = UMT5Encoder(tmp_path, text_len=8)
    out = enc(["a red circle", "a"])
    assert out.shape == (2, 8, 24) and enc.text_dim == 24
    assert torch.equal(out[0, 3:], torch.zeros(5, 24)) and torch.equal(out[1, 1:], torch.zeros(7, 24))
    assert out[0, :3].abs().sum() > 0


def test_umt5_drives_an_adapter_and_a_wrong_width_is_refused(tmp_path):
    from accelframe_adapters.wan.self_forcing import SelfForcingAdapter

    _tiny_umt5(tmp_path)
    a = SelfForcingAdapter(size="tiny", text_encoder=str(tmp_path), height=32, width=32)  # tiny DiT: text_dim 24
    cross = a.encode_prompt(["a red circle"])
    assert cross.k[0].shape[:2] == (1, 8)  # the tiny DiT's text_len
    _tiny_umt5(tmp_path / "narrow", d_model=16)
    with pytest.raises(ConfigError, match="d_model = 24"):
        SelfForcingAdapter(size="tiny", text_encoder=str(tmp_path / "narrow"), height=32, width=32)
    with pytest.raises(ConfigError, match="a local folder"):
        UMT5Encoder(tmp_path / "missing")
