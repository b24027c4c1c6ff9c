"""Crash-resume of a LoRA run: a run killed with SIGKILL right after a checkpoint, or stopped by a full disk
while writing one, and resumed from the last complete checkpoint ends with the same adapter as an uninterrupted
run (same seed); cancel stops within one step; a resume with a different job is refused. Tiny runs: a dozen
short chats, a few steps."""

from __future__ import annotations

import errno
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from safetensors.torch import load_file  # noqa: E402

from llmaas.training import SFTConfig, TrainHooks, latest_checkpoint, train  # noqa: E402
from tests.data import data_lines  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def base_cache(request, tmp_path_factory) -> Path:
    # Persistent across runs (.pytest_cache) when it can be: the one-off GGUF dequantization takes ~30-50 s.
    cache = getattr(request.config, "cache", None)
    return Path(cache.mkdir("llmaas-training-base")) if cache is not None else tmp_path_factory.mktemp("base")


def job(base_cache: Path, out: Path, **kw) -> dict:
    rows = [json.loads(x) for x in data_lines("chitchat", "train", 12, skip=100)]
    valid = [json.loads(x) for x in data_lines("chitchat", "valid", 4)]
    # 12 chats, 2 per micro-batch, 2 micro-batches per step: 3 steps an epoch, 6 in all. Dropout on, so the
    # checkpointed RNG state matters; a checkpoint every 2 steps, so the resume crosses an epoch boundary.
    return dict(base_model="smollm2", output_dir=str(out), cache_dir=str(base_cache), train_examples=rows,
                valid_examples=valid, n_epochs=2, batch_size=2, grad_accum=2, learning_rate=1e-3, lora_r=4,
                lora_alpha=8, lora_dropout=0.1, max_seq_len=96, seed=7, checkpoint_every=2, threads=2,
                warmup_ratio=0.2, lr_schedule="cosine", export_gguf=False, **kw)


KILL_AFTER_CHECKPOINT = """
import json, os, signal, sys
from llmaas.training import SFTConfig, TrainHooks, train

def on_checkpoint(step, path, metrics):
    if step == 2:
        os.kill(os.getpid(), signal.SIGKILL)

train(SFTConfig(**json.loads(sys.argv[1])), TrainHooks(on_checkpoint=on_checkpoint))
"""


@pytest.fixture(scope="module")
def full(base_cache: Path, tmp_path_factory: pytest.TempPathFactory):
    """The uninterrupted run every interrupted one must equal."""
    result = train(SFTConfig(**job(base_cache, tmp_path_factory.mktemp("full"))))
    assert result.status == "succeeded" and result.step == result.total_steps == 6
    return result


def assert_same_adapter(full, resumed) -> None:
    assert resumed.status == "succeeded" and resumed.step == 6
    assert resumed.trained_tokens == full.trained_tokens
    a = load_file(str(full.adapter_dir / "adapter_model.safetensors"))
    b = load_file(str(resumed.adapter_dir / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and len(a) == 7 * 30 * 2
    initial_b = [k for k in a if "lora_B" in k]
    assert all(a[k].abs().max() > 0 for k in initial_b)  # B starts at zero: training moved every adapter
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7)
    assert resumed.metrics["train_loss"] == pytest.approx(full.metrics["train_loss"], rel=1e-5)
    assert resumed.metrics["valid_loss"] == pytest.approx(full.metrics["valid_loss"], rel=1e-5)


def test_resume_after_kill_equals_uninterrupted_run(full, base_cache: Path, tmp_path: Path):
    crashed = tmp_path / "crashed"
    proc = subprocess.run([sys.executable, "-c", KILL_AFTER_CHECKPOINT, json.dumps(job(base_cache, crashed))],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    ckpt = latest_checkpoint(crashed)
    assert ckpt is not None and ckpt.name == "step-00000002" and not (crashed / "adapter").exists()

    events: list[str] = []
    steps: list[int] = []
    resumed = train(SFTConfig(**job(base_cache, crashed), resume_from=ckpt),
                    TrainHooks(on_event=events.append, on_metrics=lambda s, m: steps.append(s)))
    assert any("resumed from" in e for e in events) and steps[0] == 3
    assert_same_adapter(full, resumed)

    # Older checkpoints were pruned (keep 2), and a checkpoint cannot seed a different job.
    assert [p.name for p in (crashed / "checkpoints").iterdir()] and not ckpt.exists()
    with pytest.raises(ValueError, match="learning_rate"):
        train(SFTConfig(**{**job(base_cache, tmp_path / "other"), "learning_rate": 5e-4},
                        resume_from=latest_checkpoint(crashed)))


def test_cancel_stops_within_one_step(base_cache: Path, tmp_path: Path):
    seen: list[int] = []
    beats: list[float] = []
    result = train(SFTConfig(**{**job(base_cache, tmp_path / "cancel"), "checkpoint_every": 0}),
                   TrainHooks(on_metrics=lambda s, m: seen.append(s), should_stop=lambda: bool(seen),
                              heartbeat=lambda: beats.append(1.0)))
    assert result.status == "cancelled" and result.step == 1 and set(seen) == {1}
    assert len(beats) >= 2  # at least one per micro-batch
    assert result.adapter_dir is None and result.last_checkpoint is None
    assert not (tmp_path / "cancel" / "adapter").exists()


def test_a_full_disk_while_checkpointing_leaves_the_last_checkpoint_to_resume_from(
        full, base_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The disk fills while step 4's checkpoint is written: the run stops with ENOSPC (which the worker treats as
    an outage: hand the job back, resume later), no partial checkpoint is left where a resume would look, and
    resuming from step 2 ends where the uninterrupted run did."""
    from llmaas.training import checkpoint as ckpt_mod

    real_save = ckpt_mod.torch.save

    def save(obj, f, *a, **kw):
        if ".tmp-step-00000004-" in str(f):
            Path(f).write_bytes(b"half a checkpoint")  # the write got this far before the disk filled
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **kw)

    out = tmp_path / "disk-full"
    monkeypatch.setattr(ckpt_mod.torch, "save", save)
    with pytest.raises(OSError) as caught:
        train(SFTConfig(**job(base_cache, out)))
    assert caught.value.errno == errno.ENOSPC
    monkeypatch.undo()

    left = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert left == ["step-00000002"], left  # the temporary step-4 directory is gone, step 2 is whole
    assert latest_checkpoint(out) == out / "checkpoints" / "step-00000002"
    assert not (out / "adapter").exists()

    resumed = train(SFTConfig(**job(base_cache, out), resume_from=latest_checkpoint(out)))
    assert_same_adapter(full, resumed)
