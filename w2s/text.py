"""The text contract: what the prompt x and the completion y of a row are, for every stage.

Every stage joins a row as the plain string ``x + y`` — the weak teacher's SFT/DPO, D_weak, the
exemplars, scoring, the student and every baseline, evaluation and the gold reward — so the strings
must be canonical once, at ingest (w2s/data/splits.py), and never re-formatted later:

- x ends with the task instruction: ``"<post>\\nTL;DR:"`` for the TL;DR task;
- y starts with exactly one space and holds no leading "TL;DR:" (the CarperAI comparisons schema
  stores ``chosen = "TL;DR: <summary>"`` and a prompt without the instruction; taken verbatim, the
  teacher would learn ``x + "TL;DR: y"`` while scoring and the student use ``x + " y"``, and π_weak's
  own answers would start with a second "TL;DR:").

The few-shot prompt (w2s/generation/prompts.py) is built from the same x and y, so an exemplar reads
exactly as the row it came from. Token boundary: y's tokens are the tokens of tok(x + y) after its
longest common prefix with tok(x) (`completion_start`), for training and scoring alike, so a BPE merge
across the boundary counts as completion in both.
"""

from __future__ import annotations

from collections.abc import Sequence

TLDR = "TL;DR:"


def tldr_prompt(prompt: str) -> str:
    """x of the TL;DR task: the post, then "\\nTL;DR:" (kept if the post already ends with it)."""
    body = prompt.rstrip()
    return body if body.endswith(TLDR) else f"{body}\n{TLDR}"


def prompt_shape(text_format: str):
    """The function that puts x in shape for a dataset's `text_format` (tldr | verbatim)."""
    return tldr_prompt if text_format == "tldr" else (lambda prompt: prompt)


def tldr_completion(text: str) -> str:
    """y of the TL;DR task: one leading space, no "TL;DR:" of its own, no trailing whitespace."""
    body = text.strip()
    if body.startswith(TLDR):
        body = body[len(TLDR):].strip()
    return f" {body}"


def completion_start(prompt_ids: Sequence[int], full_ids: Sequence[int]) -> int:
    """How many leading tokens of tok(x + y) are x's: the longest common prefix with tok(x)."""
    common = 0
    for a, b in zip(prompt_ids, full_ids):
        if a != b:
            break
        common += 1
    return common
