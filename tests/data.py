"""The labeled data that tests read, vendored in the repository's `data/` folder (see data/README.md)."""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "data"


def data_lines(name: str, split: str, n: int, skip: int = 0) -> list[str]:
    """Lines `skip` to `skip + n` of `data/<name>/<split>.jsonl`, one JSON object each.

    Fails, rather than returning fewer, when the vendored file is shorter: a test that silently ran on less
    data would no longer test what it says."""
    lines = (DATA / name / f"{split}.jsonl").read_text().splitlines()
    if len(lines) < skip + n:
        raise ValueError(f"data/{name}/{split}.jsonl has {len(lines)} rows; this test needs {skip + n}")
    return lines[skip:skip + n]


def data_bytes(name: str, split: str, n: int) -> bytes:
    """The first `n` rows of `data/<name>/<split>.jsonl` as a JSONL upload (trailing newline included)."""
    return ("\n".join(data_lines(name, split, n)) + "\n").encode()
