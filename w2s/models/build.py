"""Materialising a `ModelSpec` into an HF folder (safetensors + tokenizer).

The embedded default's weak model is SmolLM2-135M-Instruct cut to its first `truncate_layers`
decoder layers (default 4 of 30), keeping embeddings, final norm and the tied LM head. It needs no
download, shares the strong model's tokenizer, and is clearly weaker: the truncated residual stream
no longer matches what the final norm and head expect, so it starts near-incoherent and only learns
the task from the weak-teacher SFT/DPO stages — a weak teacher that learns visibly yet keeps erring.
Tiny random models (unit tests, smoke runs) come from `TinyModelConfig` with either SmolLM2's BPE
tokenizer or a byte-level tokenizer whose vocabulary differs from SmolLM2's (cross-tokenizer tests).
"""

from __future__ import annotations

from pathlib import Path

import torch

from w2s.config import ModelSpec, TinyModelConfig

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def byte_level_tokenizer():
    """A 256-symbol byte-level tokenizer (no merges) plus <pad>/<eos>: independent of any hub."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<pad>": 0, "<eos>": 1, **{ch: i + 2 for i, ch in enumerate(alphabet)}}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>", pad_token="<pad>")


def _tiny_gpt2(spec: TinyModelConfig, tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=len(tokenizer), n_embd=spec.hidden_size, n_layer=spec.num_layers, n_head=spec.num_heads,
        n_inner=spec.intermediate_size, n_positions=spec.max_position_embeddings, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return GPT2LMHeadModel(config)


def tiny_model(spec: TinyModelConfig, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    from w2s.models.smollm2 import load_smollm2_tokenizer

    tokenizer = load_smollm2_tokenizer() if spec.tokenizer == "smollm2" else byte_level_tokenizer()
    if spec.architecture == "gpt2":
        torch.manual_seed(seed)
        return _tiny_gpt2(spec, tokenizer), tokenizer
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config), tokenizer


def truncate_layers(model, keep: int):
    layers = model.model.layers
    if keep >= len(layers):
        raise ValueError(f"truncate_layers={keep} but the model has only {len(layers)} layers")
    model.model.layers = layers[:keep]
    model.config.num_hidden_layers = keep
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:keep]
    return model


def load_spec(spec: ModelSpec, seed: int = 0):
    """(model, tokenizer) for a spec, before saving."""
    if spec.source == "smollm2_gguf":
        from w2s.models.smollm2 import load_smollm2

        model, tokenizer = load_smollm2()
    elif spec.source == "tiny_random":
        model, tokenizer = tiny_model(spec.tiny, seed)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(spec.path, trust_remote_code=spec.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(spec.path, trust_remote_code=spec.trust_remote_code)
    if spec.truncate_layers is not None:
        model = truncate_layers(model, spec.truncate_layers)
    if spec.dtype != "auto":
        model = model.to(_DTYPES[spec.dtype])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def save_model(model, tokenizer, folder: Path) -> dict[str, float]:
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    params = sum(p.numel() for p in model.parameters())
    return {"parameters": float(params), "layers": float(model.config.num_hidden_layers), "vocab": float(len(tokenizer))}


def load_pretrained(folder: str | Path, dtype: torch.dtype | None = None, device: str = "cpu"):
    """Loads a model folder written by `save_model` (an artifact); never runs remote code, and
    reads weights from safetensors only, so a pickled `pytorch_model.bin` planted in the folder is
    refused rather than unpickled."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype or torch.float32, use_safetensors=True,
                                                 trust_remote_code=False).to(device)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
