"""LoRA supervised fine-tuning loop (no HF Trainer): `train(SFTConfig, TrainHooks) -> SFTResult`.

Where the time goes, and what this loop does about it (CPU):
  * padding-free micro-batches (data.py "flatten") with per-example causal attention (attention.py);
  * the LM head + cross-entropy run only on the loss positions, chunked, with the gradient computed in the
    forward pass (loss.py) instead of [tokens, vocab] logits for every token (49152 wide for SmolLM2,
    262144 for Gemma 3, where the head is most of a step's work);
  * no Trainer machinery: one Python loop, AdamW(foreach) on the LoRA parameters only.
Determinism: the data order is a pure function of (seed, epoch); a checkpoint holds the LoRA weights, optimizer,
scheduler and RNG states and the step, so a resumed run continues the very same sequence of updates.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from llmaas.training import attention, checkpoint
from llmaas.training.base_model import resolve_base, resolve_gguf
from llmaas.training.config import SFTConfig, SFTResult, TrainHooks
from llmaas.training.data import Batch, ChatEncoder, Example, collate, encode_examples, epoch_batches
from llmaas.training.loss import frozen_head_cross_entropy

log = logging.getLogger("llmaas.training")


@contextlib.contextmanager
def _torch_settings(threads: int | None, deterministic: bool) -> Iterator[None]:
    """Process-wide torch knobs for the duration of a run, restored afterwards."""
    prev_threads, prev_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads or os.cpu_count() or 1)
    torch.use_deterministic_algorithms(deterministic)
    try:
        yield
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det)


class _Cancelled(Exception):
    pass


@contextlib.contextmanager
def _heartbeat_while_blocked(hooks: TrainHooks, every_s: float = 2.0) -> Iterator[None]:
    """Keep `hooks.heartbeat()` going from a helper thread while the training thread is stuck in one long call
    (the one-off base model conversion, model load, checkpoint writes). The training thread makes no hook
    calls meanwhile, so the calls never overlap."""
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(every_s):
            try:
                hooks.heartbeat()
            except Exception:  # a failing heartbeat must not kill the ticker; the worker sees it anyway
                log.exception("heartbeat hook failed")

    ticker = threading.Thread(target=tick, name="llmaas-train-heartbeat", daemon=True)
    ticker.start()
    try:
        yield
    finally:
        stop.set()
        ticker.join()


def _lr_lambda(warmup: int, total: int, schedule: str) -> Any:
    def f(step: int) -> float:  # step = optimizer steps done so far; multiplier for the next update
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        return max(0.0, 1.0 - progress) if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return f


def load_model(base_dir: Path, config: SFTConfig) -> Any:
    """The base model with fresh LoRA layers (initialised from `config.seed`), ready to train."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32,
                                                 attn_implementation=attention.register(), local_files_only=True)
    model.config.use_cache = False
    torch.manual_seed(config.seed)  # LoRA A init
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(config.target_modules), bias="none", task_type="CAUSAL_LM")
    with warnings.catch_warnings():  # peft calls a transformers API deprecated in v5 (is_gradient_checkpointing)
        warnings.simplefilter("ignore", FutureWarning)
        return get_peft_model(model, lora)


def forward_loss(model: Any, batch: Batch, autocast: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of target-token losses, top-1 hits) of one micro-batch through the PEFT `model`."""
    lm = model.get_base_model()  # LlamaForCausalLM / Gemma3ForCausalLM, LoRA layers injected in place
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with ctx:
        hidden = lm.model(input_ids=batch.input_ids, position_ids=batch.position_ids, seq_lens=batch.seq_lens,
                          use_cache=False).last_hidden_state
    hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, batch.pred_index)
    softcap = getattr(lm.config, "final_logit_softcapping", None)
    return frozen_head_cross_entropy(hidden, lm.get_output_embeddings().weight, batch.targets, softcap)


@torch.no_grad()
def evaluate(model: Any, examples: list[Example], batch_size: int, hooks: TrainHooks,
             autocast: bool = False) -> dict[str, float]:
    was_training = model.training
    model.eval()
    loss, correct, n = 0.0, 0, 0
    try:
        for i in range(0, len(examples), batch_size):
            if hooks.should_stop():
                raise _Cancelled
            hooks.heartbeat()
            batch = collate(examples[i:i + batch_size])
            ls, nc = forward_loss(model, batch, autocast)
            loss, correct, n = loss + float(ls), correct + int(nc), n + batch.n_targets
    finally:
        model.train(was_training)
    mean, acc = loss / max(n, 1), correct / max(n, 1)
    return {"valid_loss": mean, "valid_mean_token_accuracy": acc, "full_valid_loss": mean,
            "full_valid_mean_token_accuracy": acc}


def _data_digest(examples: list[Example]) -> str:
    h = hashlib.sha256()
    for e in examples:
        h.update(e.input_ids.tobytes())
        h.update(e.loss_mask.tobytes())
    return h.hexdigest()[:24]


def _save_final_adapter(model: Any, out: Path) -> Path:
    """output_dir/adapter, replaced atomically (a rerun of a finished job rewrites it)."""
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-adapter-", dir=out.parent))
    try:
        model.save_pretrained(str(tmp))
        if out.exists():
            shutil.rmtree(out)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def train(config: SFTConfig, hooks: TrainHooks | None = None) -> SFTResult:
    """Run (or resume) one LoRA SFT job. Blocking; call it on the worker's training thread or process."""
    hooks = hooks or TrainHooks()
    with _torch_settings(config.threads, config.deterministic):
        return _train(config, hooks)


def _train(cfg: SFTConfig, hooks: TrainHooks) -> SFTResult:
    from transformers import AutoTokenizer

    t_start = time.monotonic()
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    def event(msg: str) -> None:
        log.info("%s", msg)
        hooks.on_event(msg)

    event(f"preparing base model {cfg.base_model}")
    gguf_path = resolve_gguf(cfg.base_model)
    with _heartbeat_while_blocked(hooks):
        base_dir = resolve_base(gguf_path, cfg.cache_dir)
        tokenizer = AutoTokenizer.from_pretrained(str(base_dir), local_files_only=True)
    encoder = ChatEncoder.for_gguf(tokenizer, gguf_path)
    train_ex, train_stats = encode_examples(encoder, cfg.train_examples, cfg.max_seq_len, hooks.heartbeat)
    valid_ex, valid_stats = encode_examples(encoder, cfg.valid_examples or [], cfg.max_seq_len, hooks.heartbeat)
    if not train_ex:
        raise ValueError("no training example has an assistant token to learn from")
    event(f"tokenized {train_stats['kept']} training chats ({train_stats['tokens']} tokens, "
          f"{train_stats['loss_tokens']} trained; {train_stats['truncated']} truncated, "
          f"{train_stats['dropped_no_loss_tokens']} skipped) and {valid_stats['kept']} validation chats")

    # The base model by content (its cache dir name carries the GGUF's hash), not by how it was named.
    fingerprint = {**cfg.fingerprint(), "base_model": base_dir.name, "data": _data_digest(train_ex)}
    last_ckpt = Path(cfg.resume_from) if cfg.resume_from is not None else None
    state: dict[str, Any] | None = None
    if last_ckpt is not None:  # checked before the model loads: a mismatched resume fails fast
        state = checkpoint.load_checkpoint(last_ckpt)
        saved = state["progress"]["fingerprint"]
        if saved != fingerprint:
            diff = sorted(k for k in fingerprint if saved.get(k) != fingerprint[k])
            raise ValueError(f"cannot resume from {last_ckpt}: the job differs in {diff}")

    with _heartbeat_while_blocked(hooks):
        model = load_model(base_dir, cfg)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, foreach=True)
    n_micro = math.ceil(len(train_ex) / cfg.batch_size)
    steps_per_epoch = math.ceil(n_micro / cfg.grad_accum)
    total_steps = steps_per_epoch * cfg.n_epochs
    warmup = int(cfg.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(warmup, total_steps, cfg.lr_schedule))

    step, trained_tokens = 0, 0
    if last_ckpt is not None and state is not None:
        prog = state["progress"]
        checkpoint.load_adapter_weights(model, last_ckpt)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        checkpoint.set_rng_state(state["rng"])
        step, trained_tokens = int(prog["step"]), int(prog["trained_tokens"])
        event(f"resumed from {last_ckpt} at step {step}/{total_steps}")
    event(f"training {total_steps} steps ({cfg.n_epochs} epochs x {steps_per_epoch}), batch {cfg.batch_size} x "
          f"accum {cfg.grad_accum}, LoRA r={cfg.lora_r} alpha={cfg.lora_alpha} on {','.join(cfg.target_modules)}, "
          f"{sum(p.numel() for p in params)} trainable parameters, {torch.get_num_threads()} threads")

    metrics: dict[str, float] = {}
    eval_every = cfg.eval_every if cfg.eval_every is not None else cfg.checkpoint_every
    plan_epoch, plan = -1, []
    data_stats = {"train": train_stats, "valid": valid_stats}
    try:
        while step < total_steps:
            epoch, k = divmod(step, steps_per_epoch)
            if epoch != plan_epoch:
                plan, plan_epoch = epoch_batches(len(train_ex), cfg.batch_size, cfg.seed, epoch), epoch
            t0 = time.perf_counter()
            micro = [collate([train_ex[i] for i in idx]) for idx in plan[k * cfg.grad_accum:(k + 1) * cfg.grad_accum]]
            n_targets = sum(b.n_targets for b in micro)
            loss_sum, n_correct, n_tokens = 0.0, 0, 0
            for batch in micro:
                if hooks.should_stop():
                    raise _Cancelled
                hooks.heartbeat()
                ls, nc = forward_loss(model, batch, cfg.bf16_autocast)
                (ls / n_targets).backward()  # token mean over the whole optimizer step, across micro-batches
                loss_sum, n_correct, n_tokens = loss_sum + ls.item(), n_correct + int(nc), n_tokens + batch.n_tokens
            grad_norm = (torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm, foreach=True)
                         if cfg.max_grad_norm else None)
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            trained_tokens += n_tokens
            dt = time.perf_counter() - t0
            metrics = {**{key: v for key, v in metrics.items() if "valid" in key},
                       "train_loss": loss_sum / n_targets, "train_mean_token_accuracy": n_correct / n_targets,
                       "lr": lr, "tokens_per_s": n_tokens / dt, "epoch": step / steps_per_epoch, "step_time_s": dt}
            if grad_norm is not None:
                metrics["grad_norm"] = float(grad_norm)
            hooks.on_metrics(step, dict(metrics))
            final = step == total_steps
            if valid_ex and (final or (eval_every and step % eval_every == 0)):
                metrics.update(evaluate(model, valid_ex, cfg.batch_size, hooks, cfg.bf16_autocast))
                hooks.on_metrics(step, dict(metrics))
            if final or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                progress = {"step": step, "epoch": epoch, "batch_in_epoch": (k + 1) * cfg.grad_accum,
                            "total_steps": total_steps, "trained_tokens": trained_tokens, "metrics": metrics,
                            "fingerprint": fingerprint}
                with _heartbeat_while_blocked(hooks):
                    last_ckpt = checkpoint.save_checkpoint(out_dir / "checkpoints", step, model, optimizer,
                                                           scheduler, progress, cfg.keep_checkpoints)
                event(f"checkpoint {last_ckpt.name} saved")
                hooks.on_checkpoint(step, last_ckpt, dict(metrics))
        if valid_ex and "valid_loss" not in metrics:  # resumed from the final checkpoint
            metrics.update(evaluate(model, valid_ex, cfg.batch_size, hooks, cfg.bf16_autocast))
    except _Cancelled:
        event(f"cancelled at step {step}/{total_steps}")
        return SFTResult("cancelled", step, total_steps, None, None, last_ckpt, metrics, trained_tokens,
                         time.monotonic() - t_start, data_stats)

    with _heartbeat_while_blocked(hooks):
        adapter_dir = _save_final_adapter(model, out_dir / "adapter")
        gguf_out = None
        if cfg.export_gguf:
            from llmaas.training.export_gguf import export_lora_gguf

            gguf_out = export_lora_gguf(adapter_dir, gguf_path, out_dir / "adapter.gguf", cfg.lora_alpha,
                                        cfg.gguf_dtype)
    if gguf_out is not None:
        event(f"exported {gguf_out}")
    elapsed = time.monotonic() - t_start
    event(f"done: {step} steps, {trained_tokens} tokens, {elapsed:.1f} s")
    return SFTResult("succeeded", step, total_steps, adapter_dir, gguf_out, last_ckpt, metrics, trained_tokens,
                     elapsed, data_stats)
