"""The data/ folder that tests, benches and the example read is in the repository and well formed: a clone
needs nothing from outside it."""

from __future__ import annotations

import json

import pytest

from tests.data import DATA

# Rows vendored per file (data/README.md gives the same counts and why).
ROWS = {
    "rotten_tomatoes": {"train": 2400, "valid": 64, "test": 1000},
    "bbc_news": {"train": 1400, "valid": 64, "test": 598},
    "chitchat": {"train": 200, "valid": 80},
    "thucnews": {"train": 600, "valid": 100, "test": 400},
}


@pytest.mark.parametrize(("name", "split"), [(n, s) for n, splits in ROWS.items() for s in splits])
def test_vendored_file_has_its_rows_in_its_format(name: str, split: str):
    rows = [json.loads(x) for x in (DATA / name / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == ROWS[name][split]
    for r in rows:
        if name == "chitchat":
            assert r["messages"] and all(m["role"] in ("user", "assistant") and m["content"] for m in r["messages"])
        else:
            assert isinstance(r["text"], str) and r["text"] and isinstance(r["label"], str)


def test_every_vendored_file_is_listed():
    """A file added without its README row and its count here would go unnoticed."""
    assert sorted(p.relative_to(DATA).as_posix() for p in DATA.glob("*/*.jsonl")) == sorted(
        f"{n}/{s}.jsonl" for n, splits in ROWS.items() for s in splits)
