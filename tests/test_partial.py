"""Partial work is trusted only while its seal matches (w2s/partial.py): every kind of damage to a
sealed file or folder makes `reuse` discard it, and training never loads damaged pieces — a resume
file replaced by a pickle payload is discarded before DeepSpeed could unpickle it, and so is one
whose seal was rewritten to match, as a writer of the artifact root could."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from tests.payloads import pickle_payload, torch_payload
from tests.test_training_common import load_weights, write_completions, write_pairs
from w2s.config import DPOConfig, StudentConfig, TrainingEngineConfig
from w2s.partial import SEALS, PartialFiles
from w2s.training import train


def flip_byte(path, offset=None):
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if offset is None else offset
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path):
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 2)])


def _folder_piece(root):
    folder = root / "checkpoints" / "step-0000002"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.bin").write_bytes(b"alpha" * 100)
    (folder / "sub" / "b.bin").write_bytes(b"beta" * 100)
    return folder


DAMAGE = {
    "flip": lambda piece: flip_byte(piece / "a.bin" if piece.is_dir() else piece),
    "truncate": lambda piece: truncate(piece / "sub" / "b.bin" if piece.is_dir() else piece),
    "delete": lambda piece: (piece / "a.bin" if piece.is_dir() else piece).unlink(),
    "inject": lambda piece: (piece / "sub" / "extra.pt" if piece.is_dir() else piece.with_name("x")).write_bytes(b"x"),
}


@pytest.mark.parametrize("kind", ["file", "folder"])
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_every_damage_to_a_sealed_piece_discards_it(tmp_path, kind, damage):
    pieces = PartialFiles(tmp_path)
    if kind == "file":
        piece = tmp_path / "shards" / "part-00000.parquet"
        piece.parent.mkdir()
        piece.write_bytes(b"parquet-ish" * 50)
    else:
        piece = _folder_piece(tmp_path)
    pieces.seal(piece)
    assert pieces.reuse(piece) and PartialFiles(tmp_path).reuse(piece)  # a fresh process trusts it too

    DAMAGE[damage](piece)
    if kind == "file" and damage == "inject":
        assert PartialFiles(tmp_path).reuse(piece)  # a file beside a sealed file is not part of it
        return
    fresh = PartialFiles(tmp_path)
    assert fresh.problems(piece)
    assert not fresh.reuse(piece)
    assert not piece.exists() and not fresh.seal_path(piece).exists()


@pytest.mark.parametrize("seal_damage", ["missing", "garbage", "other_piece"])
def test_a_piece_without_a_valid_seal_is_discarded(tmp_path, seal_damage):
    pieces = PartialFiles(tmp_path)
    piece = tmp_path / "ref_logps.parquet"
    piece.write_bytes(b"table" * 20)
    pieces.seal(piece)
    seal = pieces.seal_path(piece)
    if seal_damage == "missing":
        seal.unlink()
    elif seal_damage == "garbage":
        seal.write_bytes(b"\x00{not json")
    else:
        seal.write_text(json.dumps({**json.loads(seal.read_text()), "piece": "elsewhere.parquet"}))
    assert not PartialFiles(tmp_path).reuse(piece)
    assert not piece.exists()


def test_seals_live_beside_the_pieces_and_never_in_a_manifest(ctx):
    import pyarrow as pa

    from w2s.config import PipelineConfig
    from w2s.stage import Stage, StageOutput, execute

    def body(writer, run):
        writer.write_parquet("shards/part-00000.parquet", pa.table({"v": [1, 2]}))
        return StageOutput({})

    ref = execute(ctx, Stage("sealed", 1), PipelineConfig().data, {}, body)
    manifest = json.loads((ref.local_dir() / "manifest.json").read_text())
    assert [f["path"] for f in manifest["files"]] == ["shards/part-00000.parquet"]
    assert (ref.local_dir() / SEALS / "shards" / "part-00000.parquet.json").exists()


# ------------------------------------------------------------------------------------ training
def _cfg(objective):
    kwargs = dict(learning_rate=3e-3, warmup_steps=2, batch_size=4, micro_batch_size=2, max_steps=6,
                  checkpoint_fractions=[0.5, 1.0])
    return DPOConfig(**kwargs) if objective == "dpo" else StudentConfig(**kwargs)


def _interrupted(cfg, engine, objective, model, data, out, at):
    def stop(step, metrics):
        if step == at:
            raise KeyboardInterrupt  # the state a kill leaves: resume points and checkpoints so far

    with pytest.raises(KeyboardInterrupt):
        train(cfg, engine, objective, model, [data], out, on_step=stop, progress=False)


def _same_weights(a, b):
    wa, wb = load_weights(a), load_weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("payload", [pickle_payload, torch_payload])
def test_resume_file_replaced_by_a_payload_with_its_seal_rewritten_never_runs(tmp_path, tiny_char_model_dir, payload):
    data = write_completions(tmp_path / "d.parquet", weights=[1, 2, 0.5, 1, 1, 0, 1.5, 1])
    cfg, engine = _cfg("weighted_mle"), TrainingEngineConfig(resume_every_steps=1)
    out = tmp_path / "attacked"
    _interrupted(cfg, engine, "weighted_mle", tiny_char_model_dir, data, out, at=4)
    state = next((out / ".resume").glob("step-*/mp_rank_00_model_states.pt"))
    marker = tmp_path / "marker"
    state.write_bytes(payload(marker))
    PartialFiles(out).seal(state.parent)  # the seal matches the payload now
    assert not PartialFiles(out).problems(state.parent)

    result = train(cfg, engine, "weighted_mle", tiny_char_model_dir, [data], out, progress=False)
    assert not marker.exists(), "a payload from the artifact root ran"
    assert result.resumed_from_step is None  # discarded, started over
    assert not (out / ".resume").exists()


def test_the_resume_loader_builds_data_only_even_unverified(tmp_path):
    """The second wall: a file swapped in between verification and DeepSpeed's load still cannot run."""
    from w2s.training.resume import load_without_code

    marker = tmp_path / "marker"
    path = tmp_path / "state.pt"
    path.write_bytes(torch_payload(marker))
    with pytest.raises(pickle.UnpicklingError):
        load_without_code(str(path), map_location="cpu")
    assert not marker.exists()
    torch.load(str(path), weights_only=False)  # the payload is live: the loader it replaces runs it
    assert marker.exists()


def test_resume_file_replaced_by_a_pickle_is_discarded_before_it_loads(tmp_path, tiny_char_model_dir):
    data = write_completions(tmp_path / "d.parquet", weights=[1, 2, 0.5, 1, 1, 0, 1.5, 1])
    cfg, engine = _cfg("weighted_mle"), TrainingEngineConfig(resume_every_steps=1)
    straight = tmp_path / "straight"
    train(cfg, engine, "weighted_mle", tiny_char_model_dir, [data], straight, progress=False)

    out = tmp_path / "attacked"
    _interrupted(cfg, engine, "weighted_mle", tiny_char_model_dir, data, out, at=4)
    states = list((out / ".resume").glob("step-*/mp_rank_00_model_states.pt"))
    assert len(states) == 1
    marker = tmp_path / "marker"
    states[0].write_bytes(pickle_payload(marker))
    pickle.loads(states[0].read_bytes())  # the payload is live: unpickling it runs it
    assert marker.exists()
    marker.unlink()

    result = train(cfg, engine, "weighted_mle", tiny_char_model_dir, [data], out, progress=False)
    assert not marker.exists(), "a pickle from the artifact root was unpickled"
    assert result.resumed_from_step is None  # discarded, started over
    assert _same_weights(straight / "model", out / "model")
    assert not (out / ".resume").exists()


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_checkpoint_reference_table_and_resume_state_are_recomputed(tmp_path, tiny_char_model_dir, damage):
    hurt = flip_byte if damage == "flip" else truncate
    data = write_pairs(tmp_path / "d.parquet")
    cfg, engine = _cfg("dpo"), TrainingEngineConfig(resume_every_steps=2)
    straight = tmp_path / "straight"
    train(cfg, engine, "dpo", tiny_char_model_dir, [data], straight, progress=False)

    # damaged resume state only: the run starts over and still ends equal
    out = tmp_path / "resume"
    _interrupted(cfg, engine, "dpo", tiny_char_model_dir, data, out, at=5)
    hurt(next((out / ".resume").glob("step-*/mp_rank_00_model_states.pt")))
    assert train(cfg, engine, "dpo", tiny_char_model_dir, [data], out, progress=False).resumed_from_step is None
    assert _same_weights(straight / "model", out / "model")

    # damaged checkpoint before the resume point: resumed weights cannot re-export it, so the run
    # starts over; a damaged checkpoint after it is simply re-exported on the way
    out = tmp_path / "checkpoint"
    _interrupted(cfg, engine, "dpo", tiny_char_model_dir, data, out, at=5)
    hurt(out / "checkpoints" / "step-0000003" / "model.safetensors")
    assert train(cfg, engine, "dpo", tiny_char_model_dir, [data], out, progress=False).resumed_from_step is None
    assert _same_weights(straight / "checkpoints" / "step-0000003", out / "checkpoints" / "step-0000003")
    assert _same_weights(straight / "model", out / "model")
    out = tmp_path / "late-checkpoint"
    _interrupted(cfg, engine, "dpo", tiny_char_model_dir, data, out, at=2)  # resume point 2, checkpoint 3 not yet
    assert train(cfg, engine, "dpo", tiny_char_model_dir, [data], out, progress=False).resumed_from_step == 2
    assert _same_weights(straight / "checkpoints" / "step-0000003", out / "checkpoints" / "step-0000003")

    # damaged reference table: recomputed from the initial weights, so the resume state goes too
    out = tmp_path / "reference"
    _interrupted(cfg, engine, "dpo", tiny_char_model_dir, data, out, at=5)
    hurt(out / "ref_logps.parquet")
    assert train(cfg, engine, "dpo", tiny_char_model_dir, [data], out, progress=False).resumed_from_step is None
    assert (out / "ref_logps.parquet").read_bytes() == (straight / "ref_logps.parquet").read_bytes()
    assert _same_weights(straight / "model", out / "model")
