"""Backup and restore of an embedded-mode data dir: the SQLite database plus the artifacts beside it (encrypted
files, the master key, fine-tuned adapters, checkpoints) in one .tar.gz with a checksummed manifest.

Consistency: the database is snapshotted first with SQLite's online backup API (one read transaction, so
it is consistent under WAL and concurrent writers), then the artifacts are copied. Artifacts are written
before the rows that reference them are committed, so every row in the snapshot finds its file; files
written after the snapshot are harmless extras. Rows deleted after the snapshot may have lost their file
by the time it is copied: the manifest lists such rows under `warnings`."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import sqlite3
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import IO, Any

from sqlalchemy.engine import make_url

from llmaas import __version__
from llmaas.control.db.database import Database, normalize_url
from llmaas.core.config import Settings

Progress = Callable[[int], None]  # called with the number of bytes just processed
DB_NAME, MANIFEST = "llmaas.db", "manifest.json"
FORMAT = "llmaas-backup/1"
# The marker of a base model converted for training (training.base_model, under <data-dir>/models): a cache that
# is rebuilt on first use and often gigabytes, so it is left out.
_CACHE_MARKER = "llmaas_base.json"
PG_HELP = ("LLMAAS_DATABASE_URL points to PostgreSQL: back the database up with pg_dump (see README, Operations > "
           "Backups), and the data dir with `llmaas admin backup --artifacts-only`.")


class BackupError(Exception):
    """An expected refusal or failure, with a message for the operator."""


class _Reader:
    """Hands out a file's bytes while hashing them and reporting progress."""

    def __init__(self, f: IO[bytes], progress: Progress | None) -> None:
        self.f, self.progress, self.sha = f, progress, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.sha.update(data)
        if self.progress and data:
            self.progress(len(data))
        return data


class BackupWriter:
    """Snapshots the database and lists the artifacts on construction (so `total_bytes` is known for a
    progress bar), then `write()` builds the archive under a temp name and renames it into place."""

    def __init__(self, settings: Settings, dest: Path, *, artifacts_only: bool = False, force: bool = False) -> None:
        self.data_dir, self.dest = settings.data_dir.resolve(), dest.resolve()
        url = normalize_url(settings.resolved_database_url())
        if not url.startswith("sqlite") and not artifacts_only:
            raise BackupError(PG_HELP)
        if self.dest.exists() and not force:
            raise BackupError(f"{dest} already exists: choose a new name, or --force to replace it.")
        if not self.dest.parent.is_dir():
            raise BackupError(f"The directory {self.dest.parent} does not exist.")
        if not self.data_dir.is_dir():
            raise BackupError(f"No data dir at {self.data_dir} (give --data-dir or LLMAAS_DATA_DIR).")
        self.warnings: list[str] = []
        if settings.master_key:
            self.warnings.append("LLMAAS_MASTER_KEY is set: the key is not in the archive, keep it with the backup.")
        self._tmp_prefix = f".{self.dest.name}."
        self.snapshot: Path | None = None
        self.revision: str | None = None
        db_path = None if artifacts_only else Path(make_url(url).database or "").resolve()
        if db_path is not None and not db_path.is_file():
            raise BackupError(f"No database at {db_path} (is --data-dir right?).")
        try:
            skip: set[str] = set()
            if db_path is not None:
                fd, name = tempfile.mkstemp(prefix=self._tmp_prefix, suffix=".db.tmp", dir=self.dest.parent)  # 0600
                os.close(fd)
                self.snapshot = Path(name)
                self.revision = _snapshot(db_path, self.snapshot)  # FIRST: every row it holds has its artifact
                if db_path.parent == self.data_dir:
                    skip = {db_path.name + s for s in ("", "-wal", "-shm", "-journal")}
            self.files = sorted(self._artifacts(self.data_dir, skip, top=True))
        except BaseException:
            self.close()
            raise
        self.total_bytes = sum(f[2] for f in self.files) + (self.snapshot.stat().st_size if self.snapshot else 0)

    def _artifacts(self, d: Path, skip: set[str], *, top: bool = False) -> Iterator[tuple[str, Path, int]]:
        """(archive name, path, size) of each regular file; symlinks are not followed. In-progress writes
        (`*.tmp` files, `.tmp-*` dirs) are left out: their finished form is what counts."""
        for e in os.scandir(d):
            path = Path(e.path)
            if (top and e.name in skip) or e.name.endswith(".tmp") or e.name.startswith(".tmp-") \
                    or e.name.startswith(self._tmp_prefix) or path == self.dest:
                continue
            if e.is_dir(follow_symlinks=False):
                if not (path / _CACHE_MARKER).is_file():
                    yield from self._artifacts(path, skip)
            elif e.is_file(follow_symlinks=False):
                yield path.relative_to(self.data_dir).as_posix(), path, e.stat(follow_symlinks=False).st_size

    def write(self, progress: Progress | None = None) -> dict[str, Any]:
        """Write the archive (mode 0600: it holds the master key); return its manifest."""
        members: dict[str, dict[str, Any]] = {}
        fd, name = tempfile.mkstemp(prefix=self._tmp_prefix, suffix=".tmp", dir=self.dest.parent)
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as raw:
                with tarfile.open(fileobj=raw, mode="w:gz", compresslevel=6, format=tarfile.PAX_FORMAT) as tf:
                    entries = ([(DB_NAME, self.snapshot)] if self.snapshot else []) + [(n, p) for n, p, _ in self.files]
                    for arcname, path in entries:
                        with contextlib.suppress(FileNotFoundError):  # deleted since listed: its row is gone too
                            members[arcname] = _add(tf, arcname, path, progress)
                    manifest = self._manifest(members)
                    data = json.dumps(manifest, indent=1).encode()
                    tf.addfile(_info(MANIFEST, len(data), int(datetime.now(UTC).timestamp())), io.BytesIO(data))
                raw.flush()
                os.fsync(raw.fileno())
            os.replace(tmp, self.dest)
            _fsync_dir(self.dest.parent)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return manifest

    def _manifest(self, members: dict[str, dict[str, Any]]) -> dict[str, Any]:
        if self.snapshot:
            self.warnings += _missing_artifacts(self.snapshot, set(members))
        return {"format": FORMAT, "llmaas_version": __version__, "schema_revision": self.revision,
                "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "database": DB_NAME if self.snapshot else None, "source_data_dir": str(self.data_dir),
                "files": len(members), "bytes": sum(m["bytes"] for m in members.values()), "members": members,
                "warnings": self.warnings}

    def close(self) -> None:
        if self.snapshot:
            self.snapshot.unlink(missing_ok=True)


def _snapshot(db_path: Path, out: Path) -> str | None:
    """Copy the live database into `out` through the online backup API; returns its Alembic revision."""
    src = sqlite3.connect(f"{db_path.as_uri()}?mode=rw", uri=True, timeout=30)  # rw: never create a database
    dst = sqlite3.connect(out)
    try:
        src.backup(dst)  # all pages in one step: one read transaction, so one consistent point in time
        dst.execute("PRAGMA journal_mode=DELETE")  # a self-contained file, no -wal to carry along
        if (check := dst.execute("PRAGMA quick_check").fetchone()[0]) != "ok":
            raise BackupError(f"The database snapshot failed its integrity check: {check}")
        with contextlib.suppress(sqlite3.Error, TypeError):  # no alembic_version: never migrated
            return dst.execute("SELECT version_num FROM alembic_version").fetchone()[0]
        return None
    finally:
        dst.close()
        src.close()


def _missing_artifacts(snapshot: Path, names: set[str]) -> list[str]:
    """Rows of the snapshot whose artifact is not in the archive (deleted meanwhile, or lost before)."""
    con = sqlite3.connect(snapshot)
    try:
        files = [r[0] for r in con.execute("SELECT id FROM files") if f"artifacts/files/{r[0]}.enc" not in names]
        models = [r[0] for r in con.execute("SELECT id, adapter_path FROM tenant_models")
                  if (PurePosixPath("artifacts") / r[1]).as_posix() not in names]
    except sqlite3.Error:  # a schema without these tables
        return []
    finally:
        con.close()
    return [f"{len(v)} {what} without their artifact (deleted during the backup, or missing before): "
            + ", ".join(v[:5]) + (" ..." if len(v) > 5 else "") for what, v in (("files", files), ("models", models))
            if v]


def _info(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = size, 0o600, mtime, 0, 0, "", ""
    return ti


def _add(tf: tarfile.TarFile, arcname: str, path: Path, progress: Progress | None) -> dict[str, Any]:
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())  # the size of this open inode: a file replaced meanwhile is read whole
        r = _Reader(f, progress)
        try:
            tf.addfile(_info(arcname, st.st_size, int(st.st_mtime)), r)
        except OSError as e:
            if "unexpected end of data" not in str(e):
                raise
            raise BackupError(f"{path} was truncated while being copied: run the backup again.") from None
    return {"bytes": st.st_size, "sha256": r.sha.hexdigest()}


def _fsync_dir(d: Path) -> None:  # the rename itself must survive a crash
    fd = os.open(d, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)


# --- restore ---

def _safe_name(m: tarfile.TarInfo) -> str:
    """Only plain files with relative, normalised paths: no links, devices, absolute paths or `..`."""
    p = PurePosixPath(m.name)
    if not m.isfile():
        raise BackupError(f"Refusing the archive: member '{m.name}' is not a regular file (links are not allowed).")
    if p.is_absolute() or ".." in p.parts or "\\" in m.name or not p.parts or p.as_posix() != m.name.rstrip("/"):
        raise BackupError(f"Refusing the archive: member '{m.name}' would escape the target directory.")
    return p.as_posix()


def _members(archive: Path, progress: Progress | None) -> Iterator[tuple[str, tarfile.TarInfo, IO[bytes]]]:
    """Every member with its content stream, in order, from one sequential read of the archive. The
    caller reads each member inside its loop body; read errors surface there (see _unreadable)."""
    with open(archive, "rb") as raw, tarfile.open(fileobj=_Reader(raw, progress), mode="r|gz") as tf:
        for m in tf:
            yield _safe_name(m), m, tf.extractfile(m)  # type: ignore[misc]  # a regular file: not None


@contextlib.contextmanager
def _unreadable(archive: Path) -> Iterator[None]:
    """Damaged or foreign archives end in a BackupError, not a traceback."""
    if not archive.is_file():
        raise BackupError(f"No archive at {archive}.")
    try:
        yield
    except (tarfile.TarError, EOFError, zlib.error) as e:
        raise BackupError(f"{archive} is not a readable llmaas backup: {e}") from None


def verify(archive: Path, progress: Progress | None = None) -> dict[str, Any]:
    """Check every member against the manifest's checksums; returns the manifest. Writes nothing."""
    seen: dict[str, dict[str, Any]] = {}
    manifest: dict[str, Any] | None = None
    with _unreadable(archive):
        for name, m, f in _members(archive, progress):
            if name in seen or (name == MANIFEST and manifest is not None):
                raise BackupError(f"Refusing the archive: member '{name}' appears twice.")
            if name == MANIFEST:
                try:
                    manifest = json.loads(f.read(64 << 20))
                except ValueError:
                    raise BackupError("Refusing the archive: its manifest is not valid JSON.") from None
                continue
            r = _Reader(f, None)
            while r.read(1 << 20):
                pass
            seen[name] = {"bytes": m.size, "sha256": r.sha.hexdigest()}
    expected = manifest.get("members") if isinstance(manifest, dict) else None
    if not isinstance(expected, dict) or manifest.get("format") != FORMAT:  # type: ignore[union-attr]
        raise BackupError(f"{archive} is not an llmaas backup (no {FORMAT} manifest).")
    for name in sorted(set(expected) | set(seen)):
        if name not in seen:
            raise BackupError(f"The archive is incomplete: '{name}' is in the manifest but not in the archive.")
        if seen[name] != expected.get(name):
            raise BackupError(f"Checksum mismatch for '{name}': the archive is corrupted or was altered.")
    return manifest


def _holders(db: Path) -> list[int]:
    """Processes that have the target's database open (a running server), from the process table."""
    import psutil

    paths = {str(db.resolve()) + s for s in ("", "-wal", "-shm")}
    found = []
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if any(f.path in paths for f in p.open_files()):
                found.append(p.pid)
    return found


def restore(archive: Path, target: Path, *, force: bool = False, progress: Progress | None = None) -> dict[str, Any]:
    """Verify `archive`, unpack it into a temp dir beside `target`, migrate its database to the current
    schema, then swap it in for `target`. Returns the manifest, with `schema_revision_now` added."""
    archive, target = archive.resolve(), target.resolve()
    if target.exists() and not target.is_dir():
        raise BackupError(f"{target} exists and is not a directory.")
    if target.is_dir() and any(target.iterdir()):
        if not force:
            raise BackupError(f"{target} is not empty: restore into a new directory, or --force to replace it.")
        if archive.is_relative_to(target):
            raise BackupError(f"The archive is inside {target}, which a forced restore would replace.")
        if (target / DB_NAME).exists() and (pids := _holders(target / DB_NAME)):
            raise BackupError(f"{target} is in use by process(es) {', '.join(map(str, pids))}: stop the server first.")
    manifest = verify(archive, progress)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.restore-", dir=target.parent))  # 0700
    try:
        with _unreadable(archive):
            for name, _, src in _members(archive, progress):
                if name == MANIFEST:
                    continue
                out = tmp / name
                for d in reversed(PurePosixPath(name).parents[:-1]):  # owner-only, as prepare_dirs makes them
                    (tmp / d).mkdir(mode=0o700, exist_ok=True)
                r = _Reader(src, None)
                with open(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as dst:
                    shutil.copyfileobj(r, dst, 1 << 20)
                if r.sha.hexdigest() != manifest["members"].get(name, {}).get("sha256"):  # changed since verify()
                    raise BackupError(f"Checksum mismatch for '{name}' while unpacking.")
        if manifest.get("database"):
            db = Database(f"sqlite:///{tmp / DB_NAME}")
            try:
                db.migrate()
                with db.engine.connect() as c:
                    manifest["schema_revision_now"] = c.exec_driver_sql("SELECT version_num FROM alembic_version") \
                        .scalar()
            finally:
                db.close()
        _swap(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _swap(tmp: Path, target: Path) -> None:
    """Put `tmp` in place of `target`; an old target is moved aside first and removed only after."""
    old = tmp.with_name(tmp.name + ".old") if target.exists() else None
    if old is not None:
        target.rename(old)
    try:
        tmp.rename(target)
    except BaseException:
        if old is not None:
            old.rename(target)
        raise
    _fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
