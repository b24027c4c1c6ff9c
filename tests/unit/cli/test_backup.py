"""`llmaas admin backup` / `restore`: a live data dir goes into an archive and comes back whole on a new dir;
hostile or damaged archives and occupied targets are refused before anything is written."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import sqlite3
import stat
import tarfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmaas.cli.main import app
from llmaas.control import backup
from llmaas.control.backup import FORMAT
from llmaas.control.db.database import MIGRATIONS, Database
from llmaas.control.db.models import TenantModel, UsageRecord
from tests.unit.conftest import TRAIN, Admin, bearer, chat, make_client

runner = CliRunner()


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLMAAS_DATABASE_URL", raising=False)
    monkeypatch.delenv("LLMAAS_DATA_DIR", raising=False)
    monkeypatch.delenv("LLMAAS_MASTER_KEY", raising=False)


def admin(*args: str, code: int = 0) -> str:
    result = runner.invoke(app, ["admin", *args])
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result.output


def rows(data_dir: Path, sql: str) -> list[tuple]:
    con = sqlite3.connect(data_dir / "llmaas.db")
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def head_revision() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(cfg).get_current_head()


def test_restore_recovers_files_fine_tuned_models_and_usage(tmp_path: Path) -> None:
    src, dst, archive = tmp_path / "src", tmp_path / "restored", tmp_path / "b.tar.gz"
    with make_client(data_dir=src) as c:
        tenant = Admin(c).tenant("acme")
        _, key = Admin(c).key(tenant)
        fid = c.post("/v1/files", headers=bearer(key), files={"file": ("t.jsonl", TRAIN)},
                     data={"purpose": "fine-tune"}).json()["id"]
        mid = f"ft:fake-model:{tenant}:demo:ftjob-x"
        adapter = src / "artifacts" / "adapters" / "ftjob-x" / "adapter.gguf"
        adapter.parent.mkdir(parents=True)
        adapter.write_bytes(b"GGUF-adapter-bytes")  # the artifact first, then its row (as the worker does)
        with c.app.state.control.db.session() as s:
            s.add(TenantModel(id=mid, tenant_id=tenant, base_model="fake-model", job_id="ftjob-x", step=3,
                              adapter_path="adapters/ftjob-x/adapter.gguf", created_at=datetime.now(UTC),
                              lineage={"base": "fake-model", "job": "ftjob-x", "step": 3}))
        for _ in range(3):
            assert chat(c, key).status_code == 200
        deadline = time.monotonic() + 10
        while (n_usage := rows(src, "SELECT count(*) FROM usage_records")[0][0]) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)  # the meter flushes every 50 ms
        assert n_usage == 3
        out = admin("backup", str(archive), "--data-dir", str(src))  # while the server runs
    assert "Backed up the database" in out
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    assert not list(tmp_path.glob(".b.tar.gz.*"))  # no temp file left behind
    with tarfile.open(archive) as tf:
        names = set(tf.getnames())
        manifest = json.load(tf.extractfile("manifest.json"))
    assert {"llmaas.db", "master.key", f"artifacts/files/{fid}.enc", "artifacts/adapters/ftjob-x/adapter.gguf"} <= names
    assert manifest["schema_revision"] == head_revision() and manifest["warnings"] == []
    assert manifest["files"] == len(names) - 1 and set(manifest["members"]) == names - {"manifest.json"}

    out = admin("restore", str(archive), "--data-dir", str(dst))
    assert "Restored" in out and not list(tmp_path.glob(".restored.*"))
    assert rows(dst, "SELECT count(*) FROM usage_records")[0][0] == n_usage
    with make_client(data_dir=dst) as c2:
        r = c2.get(f"/v1/files/{fid}/content", headers=bearer(key))  # decrypts with the restored master key
        assert r.status_code == 200 and r.content == TRAIN
        assert c2.get(f"/v1/models/{mid}", headers=bearer(key)).json()["id"] == mid
        resolved = c2.app.state.control.registry.resolve_tenant_model(tenant, mid)
        assert resolved.adapter_path.read_bytes() == b"GGUF-adapter-bytes"
        assert str(resolved.adapter_path).startswith(str(dst))


def test_a_backup_taken_during_writes_restores_to_a_sound_database(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    src, dst, archive = tmp_path / "src", tmp_path / "restored", tmp_path / "b.tar.gz"
    add = backup._add
    monkeypatch.setattr(backup, "_add", lambda *a: (time.sleep(0.02), add(*a))[1])  # copies overlap the writes
    stop, errors = threading.Event(), []
    with make_client(data_dir=src) as c:
        tenant = Admin(c).tenant("acme")
        _, key = Admin(c).key(tenant)
        db = Database(f"sqlite:///{src / 'llmaas.db'}")

        def write() -> None:  # a usage row per transaction, an upload every fifth: both racing the backup
            i = 0
            try:
                while not stop.is_set():
                    with db.session() as s:
                        s.add(UsageRecord(request_id=f"r{i}", tenant_id=tenant, key_id="key-1", model="fake-model",
                                          endpoint="chat", prompt_tokens=1, completion_tokens=1, cached_tokens=0,
                                          cost_pico=1, latency_ms=1.0, status="ok", created_at=datetime.now(UTC),
                                          day="2025-01-01"))
                    if i % 5 == 0:
                        r = c.post("/v1/files", headers=bearer(key), files={"file": (f"{i}.jsonl", TRAIN)},
                                   data={"purpose": "fine-tune"})
                        assert r.status_code == 200, r.text
                    i += 1
            except Exception as e:  # noqa: BLE001 - reported by the test thread
                errors.append(e)

        writer = threading.Thread(target=write)
        writer.start()
        try:
            while rows(src, "SELECT count(*) FROM usage_records")[0][0] < 20 and not errors:
                time.sleep(0.02)
            before = rows(src, "SELECT count(*) FROM usage_records")[0][0]
            admin("backup", str(archive), "--data-dir", str(src))
            after = rows(src, "SELECT count(*) FROM usage_records")[0][0]
        finally:
            stop.set()
            writer.join()
            db.close()
    assert not errors
    assert after > before  # writes went on during the backup

    admin("restore", str(archive), "--data-dir", str(dst))
    assert rows(dst, "PRAGMA integrity_check") == [("ok",)]
    assert before <= rows(dst, "SELECT count(*) FROM usage_records")[0][0] <= after
    files = [r[0] for r in rows(dst, "SELECT id FROM files")]
    assert files and all((dst / "artifacts" / "files" / f"{f}.enc").is_file() for f in files)  # rows ⊆ artifacts


def _hostile(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    """An archive whose manifest is correct for its members, so only their paths or types are wrong."""
    manifest = {"format": FORMAT, "database": None, "files": len(members), "bytes": 0, "created_at": "x",
                "schema_revision": None, "warnings": [], "members": {
                    ti.name: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()} for ti, data in members}}
    with tarfile.open(path, "w:gz") as tf:
        for ti, data in members:
            ti.size = len(data) if ti.isfile() else 0
            tf.addfile(ti, io.BytesIO(data) if ti.isfile() else None)
        raw = json.dumps(manifest).encode()
        ti = tarfile.TarInfo("manifest.json")
        ti.size = len(raw)
        tf.addfile(ti, io.BytesIO(raw))
    return path


def _symlink(name: str, to: str) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname = tarfile.SYMTYPE, to
    return ti


@pytest.mark.parametrize("member", [
    (tarfile.TarInfo("../escaped.txt"), b"x"),
    (tarfile.TarInfo("artifacts/../../escaped.txt"), b"x"),
    (tarfile.TarInfo("/tmp/llmaas-absolute-escape.txt"), b"x"),
    (_symlink("master.key", "/etc/passwd"), b""),
], ids=["dotdot", "nested-dotdot", "absolute", "symlink"])
def test_restore_refuses_members_that_escape_the_target(tmp_path: Path, member) -> None:
    archive = _hostile(tmp_path / "evil.tar.gz", [(tarfile.TarInfo("master.key"), b"k" * 44), member]
                       if member[0].name != "master.key" else [member])
    out = admin("restore", str(archive), "--data-dir", str(tmp_path / "t" / "new"), code=1)
    assert "error: Refusing the archive" in out
    assert not (tmp_path / "t").exists() and not (tmp_path / "escaped.txt").exists()
    assert not Path("/tmp/llmaas-absolute-escape.txt").exists()


def _small_data_dir(d: Path) -> None:
    runner.invoke(app, ["migrate", "--data-dir", str(d)])
    (d / "master.key").write_bytes(base64.b64encode(b"k" * 32))
    (d / "artifacts" / "files").mkdir(parents=True)
    (d / "artifacts" / "files" / "file-1.enc").write_bytes(b"ciphertext")


def test_restore_refuses_a_bad_checksum_and_writes_nothing(tmp_path: Path) -> None:
    _small_data_dir(src := tmp_path / "src")
    admin("backup", str(good := tmp_path / "good.tar.gz"), "--data-dir", str(src))
    with tarfile.open(good) as tf, tarfile.open(bad := tmp_path / "bad.tar.gz", "w:gz") as out:
        for ti in tf.getmembers():
            data = tf.extractfile(ti).read()
            if ti.name == "artifacts/files/file-1.enc":
                data = b"CIPHERTEXT"  # same size, other bytes
            out.addfile(ti, io.BytesIO(data))
    msg = admin("restore", str(bad), "--data-dir", str(tmp_path / "t" / "new"), code=1)
    assert "Checksum mismatch for 'artifacts/files/file-1.enc'" in msg
    assert not (tmp_path / "t").exists()
    (trunc := tmp_path / "truncated.tar.gz").write_bytes(good.read_bytes()[:200])
    assert "not a readable llmaas backup" in admin("restore", str(trunc), "--data-dir", str(tmp_path / "t"), code=1)
    assert not (tmp_path / "t").exists()


def test_restore_refuses_a_non_empty_or_busy_target_without_force(tmp_path: Path) -> None:
    _small_data_dir(src := tmp_path / "src")
    admin("backup", str(archive := tmp_path / "b.tar.gz"), "--data-dir", str(src))
    (target := tmp_path / "target").mkdir()
    (target / "keep.txt").write_text("mine")
    msg = admin("restore", str(archive), "--data-dir", str(target), code=1)
    assert "is not empty" in msg and "--force" in msg
    assert [p.name for p in target.iterdir()] == ["keep.txt"] and len(list(tmp_path.iterdir())) == 3

    admin("restore", str(archive), "--data-dir", str(target), "--force")
    assert not (target / "keep.txt").exists() and (target / "artifacts/files/file-1.enc").read_bytes() == b"ciphertext"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.tar.gz", "src", "target"]  # no temp or old dir left

    with make_client(data_dir=target):  # a server on it: the database is open
        assert "in use by process" in admin("restore", str(archive), "--data-dir", str(target), "--force", code=1)


def test_an_older_backup_is_migrated_on_restore(tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config

    (src := tmp_path / "src").mkdir()
    db = Database(f"sqlite:///{src / 'llmaas.db'}")
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0010")
    db.close()
    admin("backup", str(archive := tmp_path / "b.tar.gz"), "--data-dir", str(src))
    out = admin("restore", str(archive), "--data-dir", str(dst := tmp_path / "dst"))
    assert f"schema {head_revision()} (migrated from 0010)" in out
    assert rows(dst, "SELECT version_num FROM alembic_version") == [(head_revision(),)]


def test_postgres_backup_points_to_pg_dump_and_can_take_the_artifacts(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    (src := tmp_path / "src" / "artifacts").mkdir(parents=True)
    (src.parent / "master.key").write_bytes(b"key")
    monkeypatch.setenv("LLMAAS_DATABASE_URL", "postgresql://llmaas@db.example/llmaas")
    msg = admin("backup", str(tmp_path / "b.tar.gz"), "--data-dir", str(src.parent), code=1)
    assert "pg_dump" in msg and "--artifacts-only" in msg and not (tmp_path / "b.tar.gz").exists()
    admin("backup", str(tmp_path / "b.tar.gz"), "--data-dir", str(src.parent), "--artifacts-only")
    with tarfile.open(tmp_path / "b.tar.gz") as tf:
        assert sorted(tf.getnames()) == ["manifest.json", "master.key"]
    assert "already exists" in admin("backup", str(tmp_path / "b.tar.gz"), "--data-dir", str(src.parent),
                                     "--artifacts-only", code=1)


def test_caches_links_and_writes_in_progress_stay_out_of_the_archive(tmp_path: Path) -> None:
    _small_data_dir(src := tmp_path / "src")
    (cache := src / "models" / "base-0123").mkdir(parents=True)  # a converted base model: rebuilt on first use
    (cache / "llmaas_base.json").write_text("{}")
    (cache / "model.safetensors").write_bytes(b"w" * 1000)
    (src / "models" / "mine.gguf").write_bytes(b"GGUF")  # not a cache: kept
    (src / "artifacts" / "files" / "file-2.enc.tmp").write_bytes(b"half")  # an upload in progress
    (src / "artifacts" / "jobs" / "j" / "checkpoints" / ".tmp-step-4-x").mkdir(parents=True)
    (src / "artifacts" / "jobs" / "j" / "checkpoints" / ".tmp-step-4-x" / "state.pt").write_bytes(b"s")
    (src / "artifacts" / "link").symlink_to("/etc/passwd")
    admin("backup", str(archive := src / "inside.tar.gz"), "--data-dir", str(src))  # even inside the data dir
    with tarfile.open(archive) as tf:
        assert sorted(tf.getnames()) == ["artifacts/files/file-1.enc", "llmaas.db", "manifest.json", "master.key",
                                         "models/mine.gguf"]
