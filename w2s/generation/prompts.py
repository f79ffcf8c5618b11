"""Few-shot prompt templates of paper §9.6, exemplars first so every prompt of a run shares a prefix.

TL;DR (controlled summarisation), with `\\n\\n` between examples so the default stop sequence ends a
completion exactly where the base model would start another example:

    exemplar[1].prompt TL;DR: exemplar[1].response\\n\\nexemplar[2].prompt TL;DR: exemplar[2].response\\n\\nprompt TL;DR:

Instruction following: the same shape with `User:` / `Assistant:` turns. `refinement_prompt` is the
§9.6 refinement format (the strong model rewrites a weak answer) for the refinement baseline.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from w2s.text import tldr_completion, tldr_prompt

SEPARATOR = "\n\n"
Template = Literal["tldr", "instruction"]



def fewshot_prefix(template: Template, exemplars: Sequence[tuple[str, str]]) -> str:
    """The shared part of every prompt: the demonstrations, each followed by the separator. The
    data's x and y are canonical already (w2s/text.py), where these functions change nothing; text
    from elsewhere (a test, `w2s train`) is put in the same shape."""
    parts = []
    for prompt, response in exemplars:
        if not response.strip():
            raise ValueError("a few-shot exemplar has an empty response")
        if template == "tldr":
            parts.append(f"{tldr_prompt(prompt)}{tldr_completion(response)}{SEPARATOR}")
        else:
            parts.append(f"User: {prompt.strip()}\nAssistant:{tldr_completion(response)}{SEPARATOR}")
    return "".join(parts)


def fewshot_prompt(template: Template, exemplars: Sequence[tuple[str, str]], prompt: str) -> str:
    if template == "tldr":
        query = tldr_prompt(prompt)
    elif template == "instruction":
        query = f"User: {prompt.strip()}\nAssistant:"
    else:
        raise ValueError(f"unknown template {template!r}")
    return fewshot_prefix(template, exemplars) + query


def refinement_prompt(prompt: str, weak_response: str) -> str:
    """§9.6: ask the strong model to rewrite the weak teacher's answer."""
    return (
        f"User: {prompt.strip()}\nWeak Assistant:{tldr_completion(weak_response)}\n"
        "Can you make the response more helpful and coherent?\nStrong Assistant:"
    )
