"""Models without a hub: SmolLM2 from its GGUF, the truncated weak model, tiny random models."""

from __future__ import annotations

import json

import pytest
import torch

from w2s.config import ModelSpec, TinyModelConfig
from w2s.models.build import byte_level_tokenizer, load_pretrained, load_spec, save_model, truncate_layers


def test_byte_level_tokenizer_round_trips_and_differs_from_smollm2(tiny_smollm_model_dir):
    from transformers import AutoTokenizer

    char = byte_level_tokenizer()
    text = "SUBREDDIT: r/x\nPOST: héllo wörld\nTL;DR: ok"
    assert char.decode(char(text)["input_ids"]) == text
    smol = AutoTokenizer.from_pretrained(tiny_smollm_model_dir)
    assert len(char) == 258 and len(smol) == 49152
    assert char(text)["input_ids"] != smol(text)["input_ids"]


def test_truncate_layers_keeps_the_first_n(tiny_char_model_dir):
    model, _ = load_pretrained(tiny_char_model_dir)
    first_layer = model.model.layers[0].self_attn.q_proj.weight.clone()
    cut = truncate_layers(model, 1)
    assert len(cut.model.layers) == 1 and cut.config.num_hidden_layers == 1
    assert torch.equal(cut.model.layers[0].self_attn.q_proj.weight, first_layer)
    with pytest.raises(ValueError, match="only 1 layers"):
        truncate_layers(cut, 3)


def test_tiny_random_spec_saves_safetensors(tmp_path):
    model, tokenizer = load_spec(ModelSpec(source="tiny_random", tiny=TinyModelConfig(tokenizer="char", num_layers=1)))
    save_model(model, tokenizer, tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").exists() and not list((tmp_path / "m").glob("*.bin"))
    again, _ = load_pretrained(tmp_path / "m")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


@pytest.mark.slow
def test_smollm2_from_gguf_is_a_real_pretrained_model_and_truncation_is_weaker(smollm2_dir):
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["num_hidden_layers"] == 30
    strong, tokenizer = load_pretrained(smollm2_dir)
    weak = truncate_layers(load_pretrained(smollm2_dir)[0], 4)
    text = "The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is Rome."
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        strong_nll = strong(ids, labels=ids).loss.item()
        weak_nll = weak(ids, labels=ids).loss.item()
    # a real pretrained model finds this easy (random init would sit near ln(49152) ≈ 10.8)
    assert strong_nll < 3.0, strong_nll
    assert weak_nll > strong_nll + 2.0, (weak_nll, strong_nll)
