"""Training throughput: llmaas's LoRA trainer vs a plain Hugging Face `Trainer` + PEFT script, side by
side in one run: same dequantized SmolLM2 weights, same chat data (data/chitchat), same
tokenization and loss mask, same LoRA config (r 16, alpha 32, all linear layers), batch size, sequence
length, threads and float32. Each side runs in its own process; tokens/s counts real (non-pad) tokens
over the timed steps (the first `--skip` steps are warm-up). Target: llmaas >= 1.3x.

    python bench/training.py                 # 48 chats, batch 8, 6 steps per side
    python bench/training.py --rows 96 --steps 12
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "chitchat" / "train.jsonl"  # 200 chats vendored (data/README.md)
RESULTS = ROOT / "bench" / "results"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def run_side(side: str, a: argparse.Namespace, cache: Path, out: Path) -> dict:
    import torch

    torch.set_num_threads(a.threads)
    rows = [json.loads(x) for x in DATA.read_text().splitlines()[: a.rows]]
    toks: list[int] = []
    times: list[float] = []
    if side == "llmaas":
        from llmaas.training import SFTConfig, TrainHooks, train

        def on_metrics(step: int, m: dict) -> None:
            if "step_time_s" in m and a.skip < step <= a.steps and len(times) < step - a.skip:
                toks.append(round(m["tokens_per_s"] * m["step_time_s"]))
                times.append(m["step_time_s"])

        cfg = SFTConfig(base_model="smollm2", output_dir=out, cache_dir=cache, train_examples=rows, n_epochs=1,
                        batch_size=a.batch_size, max_seq_len=a.seq_len, learning_rate=2e-4, threads=a.threads,
                        export_gguf=False)
        train(cfg, TrainHooks(on_metrics=on_metrics))
    else:
        from peft import LoraConfig, get_peft_model
        from transformers import (
            AutoModelForCausalLM,
            AutoTokenizer,
            DataCollatorForSeq2Seq,
            Trainer,
            TrainerCallback,
            TrainingArguments,
        )

        from llmaas.training.base_model import resolve_base
        from llmaas.training.data import ChatEncoder

        base = resolve_base("smollm2", cache)
        tok = AutoTokenizer.from_pretrained(base)
        enc = ChatEncoder(tok)
        ds = []
        for r in rows:
            e = enc.encode(r["messages"], a.seq_len)
            ds.append({"input_ids": e.input_ids.tolist(), "attention_mask": [1] * len(e),
                       "labels": [int(t) if m else -100 for t, m in zip(e.input_ids, e.loss_mask, strict=True)]})
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation="sdpa")
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                                                 target_modules=TARGETS))

        class Clock(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):  # noqa: ANN001
                self.t = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
                if state.global_step > a.skip:
                    times.append(time.perf_counter() - self.t)

        class Counting(Trainer):
            def training_step(self, model, inputs, num_items_in_batch=None):  # noqa: ANN001
                if self.state.global_step >= a.skip:
                    toks.append(int(inputs["attention_mask"].sum()))
                return super().training_step(model, inputs, num_items_in_batch)

        args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=a.batch_size, max_steps=a.steps,
                                 learning_rate=2e-4, logging_steps=10_000, save_strategy="no", report_to=[],
                                 use_cpu=True, seed=0, dataloader_num_workers=0, disable_tqdm=True)
        Counting(model=model, args=args, train_dataset=ds, data_collator=DataCollatorForSeq2Seq(tok, padding=True),
                 callbacks=[Clock()]).train()
    return {"side": side, "steps": len(times), "tokens": sum(toks), "seconds": sum(times),
            "tokens_per_s": sum(toks) / sum(times)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=48,
                    help="chats from data/chitchat/train.jsonl (default 48; at most 200, the rows vendored there)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--skip", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--cache", type=Path, default=ROOT / ".llmaas" / "models")
    ap.add_argument("--side", choices=["llmaas", "hf"], help=argparse.SUPPRESS)  # internal: one side per process
    ap.add_argument("--output", type=Path, default=RESULTS / "training.json")
    a = ap.parse_args()
    if a.rows > (have := len(DATA.read_text().splitlines())):
        ap.error(f"--rows {a.rows}: {DATA.relative_to(ROOT)} holds {have} chats")
    if a.side:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(run_side(a.side, a, a.cache, Path(tmp))))
        return
    results = {}
    for side in ("llmaas", "hf"):
        cmd = [sys.executable, __file__, "--side", side, *sys.argv[1:]]
        print(f"running {side} ...", file=sys.stderr)
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        results[side] = json.loads(out)
    ours, peer = results["llmaas"], results["hf"]
    ratio = ours["tokens_per_s"] / peer["tokens_per_s"]
    print(f"\n== LoRA SFT throughput: {a.rows} chitchat chats, batch {a.batch_size}, seq {a.seq_len}, "
          f"{a.threads} threads, steps {a.skip + 1}..{a.steps} timed ==")
    for r in (ours, peer):
        print(f"{r['side']:>8}: {r['tokens_per_s']:7.1f} tokens/s ({r['tokens']} tokens in {r['seconds']:.1f} s)")
    print(f"ratio llmaas / HF Trainer = {ratio:.2f}x (target >= 1.3x): {'MET' if ratio >= 1.3 else 'MISSED'}")
    a.output.parent.mkdir(parents=True, exist_ok=True)
    a.output.write_text(json.dumps({"llmaas": ours, "hf_trainer": peer, "ratio": ratio, "config": {
        k: getattr(a, k) for k in ("rows", "batch_size", "seq_len", "steps", "skip", "threads")},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}, indent=1))


if __name__ == "__main__":
    main()
