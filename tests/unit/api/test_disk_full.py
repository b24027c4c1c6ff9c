"""A disk that fills while a file uploads: a clear 507 with Retry-After in the OpenAI envelope, no partial file
left on disk or listed, and what was stored before untouched."""

from __future__ import annotations

import errno

import pytest

from llmaas.control.data import crypto
from tests.unit.conftest import TRAIN, make_client


@pytest.mark.parametrize("fail_at", [0, 3])  # the first encrypted chunk, or midway through the file
def test_upload_on_a_full_disk_is_a_507_and_leaves_nothing_behind(tmp_path, monkeypatch, fail_at):
    with make_client(data_dir=tmp_path) as c:
        kept = c.post("/v1/files", files={"file": ("train.jsonl", TRAIN)}, data={"purpose": "fine-tune"})
        assert kept.status_code == 200, kept.text
        real = crypto.EncryptedWriter._chunk

        def chunk(self, data: bytes, *, last: bool) -> None:
            if self._index >= fail_at:
                raise OSError(errno.ENOSPC, "No space left on device")
            real(self, data, last=last)

        monkeypatch.setattr(crypto.EncryptedWriter, "_chunk", chunk)
        big = b"x" * (crypto.CHUNK * 5 + 7)
        r = c.post("/v1/files", files={"file": ("big.bin", big)}, data={"purpose": "batch"})
        assert r.status_code == 507 and r.headers["retry-after"], r.text
        assert r.json()["error"]["code"] == "insufficient_storage"
        monkeypatch.setattr(crypto.EncryptedWriter, "_chunk", real)
        files_dir = c.app.state.settings.artifact_dir / "files"
        assert sorted(p.name for p in files_dir.iterdir()) == [kept.json()["id"] + ".enc"]  # no partial file
        assert [f["id"] for f in c.get("/v1/files").json()["data"]] == [kept.json()["id"]]
        assert c.get(f"/v1/files/{kept.json()['id']}/content").content == TRAIN
