"""Encryption at rest: AES-256-GCM in 1 MiB chunks, so files of any size stream through bounded memory.

Layout: MAGIC, then per chunk: 12-byte nonce, 4-byte big-endian ciphertext length, ciphertext+tag.
Each chunk's associated data binds the file id, the chunk index and a last-chunk flag, so chunks
cannot be reordered, swapped between files or truncated without the decryption failing.
The master key comes from LLMAAS_MASTER_KEY (base64 of 32 bytes) or a 0600 key file made on first start."""

from __future__ import annotations

import base64
import os
import secrets
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"LLMAAS-AESGCM-1\n"
CHUNK = 1 << 20


class MasterKey:
    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the master key must be 32 bytes")
        self._aead = AESGCM(key)

    @classmethod
    def load(cls, env_value: str | None, key_file: Path) -> MasterKey:
        """From LLMAAS_MASTER_KEY, else from the key file, which is created (mode 0600) if missing."""
        if env_value:
            try:
                return cls(base64.b64decode(env_value, validate=True))
            except (ValueError, TypeError) as e:
                raise ValueError("LLMAAS_MASTER_KEY must be the base64 encoding of 32 random bytes (e.g. "
                                 "`openssl rand -base64 32`)") from e
        if not key_file.exists():
            key_file.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # another process made it first
                pass
            else:
                with os.fdopen(fd, "wb") as f:
                    f.write(base64.b64encode(secrets.token_bytes(32)))
        return cls(base64.b64decode(key_file.read_bytes().strip()))

    def writer(self, path: Path, file_id: str) -> EncryptedWriter:
        return EncryptedWriter(self._aead, path, file_id)

    def encrypt_to(self, path: Path, chunks: Iterable[bytes], file_id: str) -> int:
        """Write `chunks` encrypted to `path` (atomically). Returns the plaintext size."""
        w = self.writer(path, file_id)
        try:
            for c in chunks:
                w.write(c)
        except BaseException:
            w.abort()
            raise
        return w.close()

    def decrypt_from(self, path: Path, file_id: str) -> Iterator[bytes]:
        """Plaintext chunks; raises ValueError if the file was tampered with or truncated."""
        from cryptography.exceptions import InvalidTag

        with open(path, "rb") as f:
            if f.read(len(MAGIC)) != MAGIC:
                raise ValueError(f"{path} is not an llmaas encrypted file")
            index = 0
            header = f.read(16)
            while header:
                if len(header) != 16:
                    raise ValueError(f"{path} is truncated")
                nonce, (n,) = header[:12], struct.unpack(">I", header[12:])
                ct = f.read(n)
                nxt = f.read(16)
                try:
                    yield self._aead.decrypt(nonce, ct, _aad(file_id, index, last=not nxt))
                except InvalidTag:
                    raise ValueError(f"{path} failed authentication (corrupted, truncated or not this key's)") from None
                index += 1
                header = nxt


class EncryptedWriter:
    """Incremental encryption to `path`: bytes in any chunking, written to a tmp file renamed on close."""

    def __init__(self, aead: AESGCM, path: Path, file_id: str) -> None:
        self._aead, self.path, self.file_id = aead, path, file_id
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = path.with_suffix(path.suffix + ".tmp")
        self._f = open(self._tmp, "wb")  # noqa: SIM115 - closed in close()/abort()
        self._f.write(MAGIC)
        self._buf = bytearray()
        self._index = 0
        self.size = 0

    def write(self, data: bytes) -> None:
        self._buf += data
        self.size += len(data)
        # Keep at least one byte back so the last chunk is always written by close() with last=True.
        while len(self._buf) > CHUNK:
            self._chunk(bytes(self._buf[:CHUNK]), last=False)
            del self._buf[:CHUNK]

    def _chunk(self, data: bytes, *, last: bool) -> None:
        nonce = secrets.token_bytes(12)
        ct = self._aead.encrypt(nonce, data, _aad(self.file_id, self._index, last))
        self._f.write(nonce + struct.pack(">I", len(ct)) + ct)
        self._index += 1

    def close(self) -> int:
        self._chunk(bytes(self._buf), last=True)
        self._f.close()
        os.replace(self._tmp, self.path)
        return self.size

    def abort(self) -> None:
        self._f.close()
        self._tmp.unlink(missing_ok=True)


def _aad(file_id: str, index: int, last: bool) -> bytes:
    return f"{file_id}:{index}:{int(last)}".encode()
