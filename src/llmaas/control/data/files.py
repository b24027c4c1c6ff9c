"""Files: uploaded, validated (fine-tune files, line by line), stored encrypted, tenant-scoped.

Upload is incremental (`FileUpload.write` per received chunk) so a large file never sits in memory
or unencrypted on disk; it lands at <artifact_dir>/files/<id>.enc."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from llmaas.control.auth import audit
from llmaas.control.auth.principal import SPENDERS, Context
from llmaas.control.clock import unix, utcnow
from llmaas.control.data.crypto import EncryptedWriter, MasterKey
from llmaas.control.data.datasets import ChatFileValidator, ValidationReport
from llmaas.control.db.database import Database
from llmaas.control.db.models import StoredFile
from llmaas.control.paging import cursor_row, keyset_page
from llmaas.core.errors import InvalidRequestError, LlmaasError, NotFoundError

PURPOSES = ("fine-tune", "batch", "evals")


class FileTooLargeError(LlmaasError):
    status_code = 413
    error_type = "invalid_request_error"
    code = "file_too_large"


def file_dict(f: StoredFile) -> dict:
    return {"id": f.id, "object": "file", "bytes": f.bytes, "created_at": unix(f.created_at),
            "filename": f.filename, "purpose": f.purpose, "status": f.status, "status_details": f.status_details,
            "expires_at": None}


class FileUpload:
    """One upload in progress: encrypts, hashes, counts and (for fine-tune files) validates as bytes arrive."""

    def __init__(self, service: FileService, ctx: Context, purpose: str | None, filename: str) -> None:
        self.service, self.ctx, self.purpose, self.filename = service, ctx, purpose, filename
        self.id = "file-" + secrets.token_hex(12)
        self._writer: EncryptedWriter = service.key.writer(service.path(self.id), self.id)
        self._sha = hashlib.sha256()
        self._validator = ChatFileValidator()

    def write(self, data: bytes) -> None:
        if self._writer.size + len(data) > self.service.max_bytes:
            self.abort()
            raise FileTooLargeError(
                f"The file is larger than the limit of {self.service.max_bytes} bytes (LLMAAS_MAX_FILE_BYTES).",
                param="file")
        self._writer.write(data)
        self._sha.update(data)
        self._validator.feed(data)

    def abort(self) -> None:
        self._writer.abort()

    def finish(self, purpose: str | None = None) -> StoredFile:
        """Validate, then commit the bytes and the record; on a validation error nothing is kept."""
        purpose = purpose or self.purpose
        if purpose not in PURPOSES:
            self.abort()
            raise InvalidRequestError(f"'purpose' must be one of {', '.join(PURPOSES)}.", param="purpose")
        report: ValidationReport = self._validator.close()
        meta: dict = {}
        if purpose == "fine-tune":
            if not report.ok:
                self.abort()
                raise InvalidRequestError(f"Invalid fine-tuning file '{self.filename}': {report.summary()}",
                                          param="file", code="invalid_file_format")
            meta = {"examples": report.examples, "messages": report.messages, "chars": report.chars}
        size = self._writer.close()
        f = StoredFile(id=self.id, tenant_id=self.ctx.principal.tenant_id, purpose=purpose,
                       filename=self.filename[:300], bytes=size, sha256=self._sha.hexdigest(), created_at=utcnow(),
                       status="processed", status_details=None, meta=meta)
        try:
            with self.service.db.session() as s:
                s.add(f)
        except BaseException:
            self.service.path(self.id).unlink(missing_ok=True)
            raise
        return f


class FileService:
    def __init__(self, db: Database, key: MasterKey, root: Path, max_bytes: int) -> None:
        self.db, self.key, self.root, self.max_bytes = db, key, root, max_bytes

    def path(self, file_id: str) -> Path:
        return self.root / f"{file_id}.enc"

    def upload(self, ctx: Context, purpose: str | None, filename: str) -> FileUpload:
        ctx.principal.require(*SPENDERS)
        if purpose is not None and purpose not in PURPOSES:
            raise InvalidRequestError(f"'purpose' must be one of {', '.join(PURPOSES)}.", param="purpose")
        return FileUpload(self, ctx, purpose, filename or "upload.jsonl")

    def store_output(self, tenant_id: str, purpose: str, filename: str, data: bytes) -> StoredFile:
        """A platform-written file (e.g. a fine-tune's metrics CSV), encrypted like uploads."""
        fid = "file-" + secrets.token_hex(12)
        size = self.key.encrypt_to(self.path(fid), [data], fid)
        f = StoredFile(id=fid, tenant_id=tenant_id, purpose=purpose, filename=filename, bytes=size,
                       sha256=hashlib.sha256(data).hexdigest(), created_at=utcnow(), status="processed",
                       status_details=None, meta={})
        with self.db.session() as s:
            s.add(f)
        return f

    def get(self, s: Session, ctx: Context, file_id: str) -> StoredFile:
        f = s.get(StoredFile, file_id)
        if f is None or not ctx.principal.can_see_tenant(f.tenant_id):
            raise NotFoundError(f"No such File object: {file_id}", param="file_id")
        return f

    def list(self, s: Session, ctx: Context, *, purpose: str | None = None, after: str | None = None,
             limit: int = 100, order: str = "desc") -> tuple[list[StoredFile], bool]:
        stmt = select(StoredFile).where(StoredFile.tenant_id == ctx.principal.tenant_id)
        if purpose:
            stmt = stmt.where(StoredFile.purpose == purpose)
        key = (StoredFile.created_at, StoredFile.id)
        cursor = cursor_row(s, StoredFile, after, key, visible=lambda f: f.tenant_id == ctx.principal.tenant_id,
                            error=f"'after' is not a file id of yours: {after}")
        return keyset_page(s, stmt, key, after=cursor, limit=limit, order=order)

    def content(self, ctx: Context, file_id: str) -> tuple[StoredFile, Iterator[bytes]]:
        with self.db.session() as s:
            f = self.get(s, ctx, file_id)
        return f, self.key.decrypt_from(self.path(f.id), f.id)

    def read_all(self, tenant_id: str, file_id: str) -> bytes:
        """For workers: the plaintext of a tenant's file (404 if it is not that tenant's)."""
        with self.db.session() as s:
            f = s.get(StoredFile, file_id)
            if f is None or f.tenant_id != tenant_id:
                raise NotFoundError(f"No such File object: {file_id}", param="training_file")
        return b"".join(self.key.decrypt_from(self.path(f.id), f.id))

    def delete(self, ctx: Context, file_id: str) -> None:
        ctx.principal.require(*SPENDERS)
        with self.db.session() as s:
            f = self.get(s, ctx, file_id)
            before = file_dict(f)
            s.delete(f)
            audit.record(s, ctx, "file.delete", "file", f.id, tenant_id=f.tenant_id, before=before)
        self.path(file_id).unlink(missing_ok=True)
