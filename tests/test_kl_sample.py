"""k3 KL is computed on the sample the policy drew (E6): a sample that stopped on a stop string drew
those characters, not EOS, so its log-prob is log π(y + stop | x); one that stopped on EOS is
log π(y + EOS | x). Checked against log-probs summed by hand over the drawn token ids."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from w2s.config import GenerationEngineConfig, GenerationParams
from w2s.generation import Request, derive_seed, generate, truncate_at_stop
from w2s.generation.requests import Record
from w2s.models.build import load_pretrained
from w2s.scoring import score_rows

HF = GenerationEngineConfig(backend="hf")


def test_truncate_at_stop_names_the_stop_string_it_cut_at():
    assert truncate_at_stop(" a b\n\nc.", ["\n\n", "."]) == (" a b", "\n\n")
    assert truncate_at_stop(" a b.\n\n", ["\n\n", "."]) == (" a b", ".")
    assert truncate_at_stop(" a\n\nb", ["\n", "\n\n"]) == (" a", "\n\n")  # same start: the longer one
    assert truncate_at_stop(" a b", ["\n\n"]) == (" a b", "")


def test_record_sampled_is_the_drawn_continuation():
    assert Record("p", 0, " y", 3, "stop", 0, "\n").sampled() == (" y\n", False)
    assert Record("p", 0, " y", 3, "stop", 0).sampled() == (" y", True)
    assert Record("p", 0, " y", 3, "length", 0).sampled() == (" y", False)


@torch.no_grad()
def _by_hand(model, tokenizer, prompt: str, drawn_ids: list[int]) -> float:
    prompt_ids = tokenizer(prompt)["input_ids"]
    ids = torch.tensor([prompt_ids + drawn_ids])
    logp = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
    return float(logp[torch.arange(len(prompt_ids) - 1, ids.shape[1] - 1), ids[0, len(prompt_ids):]].sum())


def test_kl_scores_each_sample_as_drawn(tiny_char_model_dir):
    # A random byte-level model: five stop bytes give most samples a stop-string ending.
    stop = [" ", "e", "a", "o", "t"]
    requests = [Request(f"p{i}", f"POST: number {i} here\nTL;DR:", n=4, seed=derive_seed(3, f"p{i}")) for i in range(6)]
    records = generate(requests, GenerationParams(max_tokens=20, stop=stop), HF, tiny_char_model_dir, seed=0)
    on_stop = [r for r in records if r.stop_string]
    assert on_stop, "no sample hit the stop string: the test proves nothing"
    assert all(r.stop_string in stop and r.finish_reason == "stop" for r in on_stop)
    model, tokenizer = load_pretrained(tiny_char_model_dir, dtype=torch.float32)
    prompts = {r.request_id: r.prompt for r in requests}
    assert any(r.finish_reason == "length" for r in records)
    rows = [(prompts[r.request_id], *r.sampled()) for r in records]
    scored = score_rows(tiny_char_model_dir, [p for p, _, _ in rows], [t for _, t, _ in rows], [e for _, _, e in rows])
    for r, (prompt, text, ended), got in zip(records, rows, scored):
        drawn = tokenizer(prompt + text)["input_ids"][len(tokenizer(prompt)["input_ids"]):]
        drawn += [tokenizer.eos_token_id] if ended else []
        assert abs(got - _by_hand(model, tokenizer, prompt, drawn)) < 1e-3
        if r.stop_string:  # the old rule (y + EOS) scores a continuation that was not drawn
            old = tokenizer(prompt + r.completion)["input_ids"][len(tokenizer(prompt)["input_ids"]):] + [tokenizer.eos_token_id]
            assert abs(got - _by_hand(model, tokenizer, prompt, old)) > 1e-3


def test_kl_log_probs_are_scored_in_the_format_the_sampler_ran(tmp_path):
    from tasks.evaluate import EvaluateSlice
    from w2s.config.loading import load_config
    from w2s.precision import sampled_precision

    for declared, under_vllm in (("bfloat16", "bf16"), ("float32", "fp32"), (None, "fp32")):
        folder = tmp_path / str(declared)
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"model_type": "llama"} | ({"dtype": declared} if declared else {})))
        assert sampled_precision("vllm", folder) == under_vllm
        assert sampled_precision("hf", folder) == "fp32"  # the transformers backend loads fp32
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "config.json").write_text(json.dumps({"torch_dtype": "bfloat16"}))
    assert sampled_precision("vllm", legacy) == "bf16"
    config = load_config(None, ["engines.generation.backend=vllm"])
    as_sampled = EvaluateSlice.from_pipeline(config)
    assert as_sampled.evaluation.score_precision == "as_sampled"
    assert as_sampled.precision_of(tmp_path / "bfloat16") == "bf16" and as_sampled.precision_of(tmp_path / "float32") == "fp32"
    pinned = EvaluateSlice.from_pipeline(load_config(None, ["engines.generation.backend=vllm", "evaluation.score_precision=fp32"]))
    assert pinned.precision_of(tmp_path / "bfloat16") == "fp32"


def test_kl_scores_each_checkpoint_as_sampled_and_loads_the_reference_once(tmp_path, monkeypatch):
    """kl_logps: every checkpoint's answers under its own format, π_ref's once for all checkpoints."""
    import numpy as np

    import tasks.evaluate as evaluate
    from w2s.config.loading import load_config

    folders = {}
    for name, declared in (("final", "bfloat16"), ("step-2", "bfloat16"), ("ref", "float32")):
        folders[name] = tmp_path / name
        folders[name].mkdir()
        (folders[name] / "config.json").write_text(json.dumps({"dtype": declared}))
    calls = []

    def fake_score_rows(model_dir, prompts, completions, ended, batch_tokens, label, precision, device):
        calls.append((Path(model_dir).name, precision, list(completions)))
        return [float(len(c)) + (0.5 if Path(model_dir).name == "ref" else 0.0) for c in completions]

    monkeypatch.setattr(evaluate, "score_rows", fake_score_rows)
    monkeypatch.setattr(evaluate, "model_dir", lambda ref, store: folders["ref"])
    monkeypatch.setattr(evaluate, "torch_device", lambda device: "cpu")
    cfg = evaluate.EvaluateSlice.from_pipeline(load_config(None, ["engines.generation.backend=vllm"]))
    points = [{"name": "final", "path": folders["final"]}, {"name": "step-2", "path": folders["step-2"]}]
    answered = [[Record("a", 0, " x", 1, "stop", 0, "\n"), Record("b", 0, " yy", 2, "length", 0)],
                [Record("a", 0, " zzz", 3, "stop", 0), Record("b", 0, " w", 1, "stop", 0, "\n")]]
    ctx = type("Ctx", (), {"device": "cpu"})()
    kl_ref = type("Ref", (), {"stage": "strong_base"})()
    kl = evaluate.kl_logps(ctx, cfg, "evaluate_eve", ["p1", "p2"], points, answered, kl_ref, None)
    policy, ref = kl.policy, kl.reference
    assert kl.precision == {"policy": "bf16", "reference": "fp32"}  # what the stage's info reports
    assert [(name, precision) for name, precision, _ in calls] == [("final", "bf16"), ("step-2", "bf16"), ("ref", "fp32")]
    assert calls[-1][2] == [" x\n", " yy", " zzz", " w\n"]  # every checkpoint's samples as drawn, in one call
    np.testing.assert_array_equal(policy[1], [4.0, 3.0])
    np.testing.assert_array_equal(ref[0], [3.5, 3.5])
    np.testing.assert_array_equal(ref[1], [4.5, 3.5])


def test_the_kl_checkpoints_option_keeps_the_keys_of_evaluations_cached_before_it():
    """`all` (the behaviour before the option) is left out of the key's config; `final` is a new key."""
    import tasks.evaluate as evaluate
    from w2s.artifacts import cache_key
    from w2s.config.loading import load_config
    from w2s.stage import config_slice

    def evaluation_slice(value):
        return config_slice(evaluate.EvaluateSlice.from_pipeline(load_config(None, [f"evaluation.kl_checkpoints={value}"])))

    every, final = evaluation_slice("all"), evaluation_slice("final")
    assert "kl_checkpoints" not in every["evaluation"] and final["evaluation"]["kl_checkpoints"] == "final"
    assert {k: v for k, v in final["evaluation"].items() if k != "kl_checkpoints"} == every["evaluation"]
    assert cache_key("evaluate_eve", 3, every, {}) != cache_key("evaluate_eve", 3, final, {})
    assert evaluate.EvaluateSlice.model_validate(every).evaluation.kl_checkpoints == "all"  # a cached manifest's config reads back
