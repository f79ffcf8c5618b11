"""One optimiser budget for every policy trained from π_ref_strong on weak supervision.

The principle, stated before any result: EVE's student and the baselines it is compared with differ
in their data and their objective, never in how hard they are trained. Each competitor takes the
student's peak learning rate, schedule (warm-up, its cap, cosine or constant), batch size, weight
decay and gradient clip, and the student's number of optimiser steps (`max_steps`, so a smaller
data set is passed over more often). What stays a baseline's own: what only sizes memory
(micro_batch_size, max_seq_len, gradient checkpointing, LoRA) and what defines the method (DPO's β,
the checkpoints it keeps).

One exception, fixed by the paper (§5.2: "we train DPO for 1 epoch with β = 0.05"): DPO with the
weak reward keeps its epochs, so its step count follows from its pairs — every within-prompt pair of
the K samples the weak teacher orders (w2s/baseline_data.select_pairs), up to K(K−1)/2 per prompt
(ties and equal texts are skipped): ≤ 288 pairs, ≤ 18 steps in the embedded default against EVE's 24;
≤ 60,000 pairs, ≤ 468 steps in the paper config against 312.

Not covered, on purpose: the weak teacher and the strong ceiling are trained on gold data to be as
good as they can be (the ends of PGR), not compared with EVE. `baselines.budget: own` trains every
section as written (the old behaviour).
"""

from __future__ import annotations

from typing import TypeVar

from w2s.config import TrainConfig

SHARED = ("learning_rate", "warmup_steps", "max_warmup_fraction", "lr_scheduler", "batch_size", "weight_decay", "grad_clip")
Section = TypeVar("Section", bound=TrainConfig)


def student_rows(config) -> int:
    """The rows EVE's student trains on: K samples of each student prompt (F = 0 rows included)."""
    return config.data.n_student * config.sampling.k


def student_steps(config) -> int:
    from w2s.training.trainer import total_steps

    return total_steps(config.student, student_rows(config))


def matched(section: Section, config, *, epochs_fixed: bool = False) -> Section:
    """`section` with EVE's student's budget (module docstring); `epochs_fixed`: the step count
    follows from the section's own epochs over its data (DPO with the weak reward)."""
    if config.baselines.budget == "own":
        return section
    update = {name: getattr(config.student, name) for name in SHARED}
    update["max_steps"] = None if epochs_fixed else student_steps(config)
    if section.batch_size != update["batch_size"] and update["batch_size"] % section.micro_batch_size:
        raise ValueError(f"baselines.budget 'eve': the student's batch_size {update['batch_size']} is not a multiple of "
                         f"this baseline's micro_batch_size {section.micro_batch_size}; set it to a divisor")
    return type(section).model_validate({**section.model_dump(), **update})
