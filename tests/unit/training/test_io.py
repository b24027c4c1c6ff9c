"""llmaas.training files: GGUF LoRA export (names, shapes, metadata, the Q/K permutation), GGUF header
reading, checkpoint directory handling, config validation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")

from llmaas.training.base_model import read_gguf_arch, resolve_gguf  # noqa: E402
from llmaas.training.export_gguf import export_lora_gguf, permute_rows  # noqa: E402

SHAPES = {"self_attn.q_proj": (576, 576), "self_attn.k_proj": (192, 576), "self_attn.v_proj": (192, 576),
          "self_attn.o_proj": (576, 576), "mlp.gate_proj": (1536, 576), "mlp.up_proj": (1536, 576),
          "mlp.down_proj": (576, 1536)}  # HF [n_out, n_in]
GGUF_NAME = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}


def reference_permute(w: torch.Tensor, n_head: int, n_head_kv: int | None) -> torch.Tensor:
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute, verbatim in behaviour (torch)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def random_adapter(r: int = 4, layers: tuple[int, ...] = (0, 7, 29)) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    sd = {}
    for i in layers:
        for mod, (n_out, n_in) in SHAPES.items():
            p = f"base_model.model.model.layers.{i}.{mod}"
            sd[f"{p}.lora_A.weight"] = torch.randn(r, n_in, generator=g)
            sd[f"{p}.lora_B.weight"] = torch.randn(n_out, r, generator=g)
    return sd


def test_read_gguf_arch():
    arch = read_gguf_arch(resolve_gguf("smollm2"))
    assert (arch.architecture, arch.n_layer, arch.n_head, arch.n_head_kv) == ("llama", 30, 9, 3)
    assert arch.tensor_shapes["blk.0.attn_k.weight"] == (576, 192)  # ggml order: [n_in, n_out]


def gemma_gguf() -> Path:
    from llmaas.core.model_files import ModelPackageMissingError

    try:
        return resolve_gguf("gemma3-270m")
    except ModelPackageMissingError as e:
        pytest.skip(str(e))


def test_read_gguf_arch_gemma():
    arch = read_gguf_arch(gemma_gguf())
    assert (arch.architecture, arch.n_layer, arch.n_head, arch.n_head_kv) == ("gemma3", 18, 4, 1)
    assert arch.tensor_shapes["blk.0.attn_q.weight"] == (640, 1024)  # 4 heads of 256
    assert arch.add_bos_token and arch.chat_template is None  # served with engine/chat_template.py's GEMMA


def test_export_gemma3_keeps_q_k_rows_as_they_are(tmp_path: Path):
    """llama.cpp's Gemma 3 converter stores q/k unpermuted (no LlamaModel.permute), so B goes over verbatim."""
    g = torch.Generator().manual_seed(2)
    shapes = {"self_attn.q_proj": (1024, 640), "self_attn.k_proj": (256, 640), "mlp.down_proj": (640, 2048)}
    sd = {}
    for mod, (n_out, n_in) in shapes.items():
        p = f"base_model.model.model.layers.17.{mod}"
        sd[f"{p}.lora_A.weight"] = torch.randn(4, n_in, generator=g)
        sd[f"{p}.lora_B.weight"] = torch.randn(n_out, 4, generator=g)
    out = export_lora_gguf(sd, gemma_gguf(), tmp_path / "g.gguf", alpha=8.0)
    reader = gguf.GGUFReader(str(out))
    assert reader.get_field("general.architecture").contents() == "gemma3"
    tensors = {t.name: t for t in reader.tensors}
    for mod, (n_out, _) in shapes.items():
        gg = f"blk.17.{GGUF_NAME[mod]}.weight.lora_b"
        b = sd[f"base_model.model.model.layers.17.{mod}.lora_B.weight"]
        np.testing.assert_array_equal(np.asarray(tensors[gg].data).reshape(n_out, 4), b.numpy())
    with pytest.raises(ValueError, match="no counterpart"):
        export_lora_gguf(random_adapter(layers=(18,)), gemma_gguf(), tmp_path / "h.gguf", alpha=1.0)


def test_export_matches_llama_cpp_conventions(tmp_path: Path):
    sd = random_adapter()
    out = export_lora_gguf(sd, resolve_gguf("smollm2"), tmp_path / "a.gguf", alpha=8.0)
    reader = gguf.GGUFReader(str(out))
    kv = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert kv["general.architecture"] == "llama" and kv["general.type"] == "adapter"
    assert kv["adapter.type"] == "lora" and kv["adapter.lora.alpha"] == pytest.approx(8.0)
    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == 3 * 7 * 2
    for i in (0, 7, 29):
        for mod, (n_out, n_in) in SHAPES.items():
            hf, gg = f"base_model.model.model.layers.{i}.{mod}", f"blk.{i}.{GGUF_NAME[mod]}.weight"
            a, b = sd[f"{hf}.lora_A.weight"], sd[f"{hf}.lora_B.weight"]
            ta, tb = tensors[f"{gg}.lora_a"], tensors[f"{gg}.lora_b"]
            assert ta.tensor_type == gguf.GGMLQuantizationType.F32
            assert list(ta.shape) == [n_in, 4] and list(tb.shape) == [4, n_out]  # ggml ne, what llama.cpp checks
            np.testing.assert_array_equal(np.asarray(ta.data).reshape(4, n_in), a.numpy())  # A never permuted
            if mod == "self_attn.q_proj":
                b = reference_permute(b, 9, 9)
            elif mod == "self_attn.k_proj":
                b = reference_permute(b, 9, 3)
            np.testing.assert_array_equal(np.asarray(tb.data).reshape(n_out, 4), b.numpy())


def test_permuting_b_permutes_the_merged_update():
    """llama.cpp stores W_q permuted; B @ A must land in the same (permuted) row space."""
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(4, 576, generator=g), torch.randn(192, 4, generator=g)
    merged = reference_permute(b @ a, 9, 3)
    np.testing.assert_allclose(permute_rows(b.numpy(), 9, 3) @ a.numpy(), merged.numpy(), rtol=1e-5, atol=1e-5)


def test_export_from_adapter_dir_f16_and_errors(tmp_path: Path):
    from safetensors.torch import save_file

    adir = tmp_path / "adapter"
    adir.mkdir()
    save_file(random_adapter(r=2, layers=(3,)), str(adir / "adapter_model.safetensors"))
    (adir / "adapter_config.json").write_text('{"lora_alpha": 16, "r": 2}')
    out = export_lora_gguf(adir, resolve_gguf("smollm2"), tmp_path / "b.gguf", dtype="f16")
    reader = gguf.GGUFReader(str(out))
    assert reader.get_field("adapter.lora.alpha").contents() == pytest.approx(16.0)
    assert {t.tensor_type for t in reader.tensors} == {gguf.GGMLQuantizationType.F16}

    bad = random_adapter(layers=(0,))
    bad["base_model.model.lm_head.lora_A.weight"] = torch.zeros(4, 576)
    with pytest.raises(ValueError, match="unsupported tensor"):
        export_lora_gguf(bad, resolve_gguf("smollm2"), tmp_path / "c.gguf", alpha=1.0)
    wrong = random_adapter(layers=(0,))
    wrong["base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight"] = torch.zeros(576, 4)
    with pytest.raises(ValueError, match="do not fit"):
        export_lora_gguf(wrong, resolve_gguf("smollm2"), tmp_path / "d.gguf", alpha=1.0)
    assert not (tmp_path / "c.gguf").exists() and not list(tmp_path.glob(".*.tmp"))


def test_latest_checkpoint_ignores_partial_writes(tmp_path: Path):
    from llmaas.training.checkpoint import STATE_FILE, latest_checkpoint

    root = tmp_path / "checkpoints"
    assert latest_checkpoint(tmp_path) is None
    for name, complete in [("step-00000002", True), ("step-00000004", True), (".tmp-step-00000006-x1", True),
                           ("step-00000008", False)]:
        (root / name).mkdir(parents=True)
        if complete:
            (root / name / STATE_FILE).write_bytes(b"x")
    assert latest_checkpoint(tmp_path) == root / "step-00000004"


def test_config_validation_and_cheap_import():
    from llmaas.training import SFTConfig

    rows = [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}]
    cfg = SFTConfig(base_model="smollm2", output_dir="o", cache_dir="c", train_examples=rows)
    assert cfg.fingerprint()["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                   "down_proj"]
    for bad in ({"batch_size": 0}, {"learning_rate": 0}, {"train_examples": []}, {"warmup_ratio": 1.0}):
        with pytest.raises(ValueError):
            SFTConfig(**{"base_model": "smollm2", "output_dir": "o", "cache_dir": "c", "train_examples": rows, **bad})
    # Building a job config must not drag torch into a process (e.g. a control-plane helper).
    code = "import sys, llmaas.training as t; t.SFTConfig; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
