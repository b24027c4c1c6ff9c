"""The same-node link between an ingress and an engine replica: a Unix socket.

A request routed through Serve's handle is a Ray actor call plus one streamed object per output: ~3 ms a one-token
answer here, against ~0.9 ms over this socket (bench/README.md). When a replica runs on the ingress's own node, the
ingress sends the request over this socket instead, as vLLM's API server reaches its engine core over IPC.
Everything else still goes through the handle, which routes, queues and starts replicas: a model at zero replicas,
replicas on other nodes, an adapter no local replica holds, local replicas without a free slot.

Frames are a 4-byte big-endian length and a pickle (the socket is the user's own, mode 0600, as Ray's object
transfers are pickles between the user's processes). One request per connection: the ingress sends
(GenerationRequest, adapter file); the replica answers with GenerationOutputs up to a finished one, or with one
LlmaasError, or with None when its slots are full (the ingress tries its next local replica, then the handle).
Closing the connection aborts the sequence; a replica that dies leaves a connection that ends early.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import struct
import tempfile
import time
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any

from llmaas.core.errors import EngineUnavailableError, LlmaasError
from llmaas.engine.types import GenerationOutput, GenerationRequest

log = logging.getLogger("llmaas.cluster")
_HEADER = struct.Struct(">I")
MAX_FRAME = 64 << 20

Generate = Callable[[GenerationRequest, str | None], AsyncGenerator[GenerationOutput, None]]


def socket_path(replica_id: str) -> str:
    """Where a replica listens: the node's temp dir (a Unix socket path must stay under ~100 bytes, and the shared
    artifact directory may be a network file system, where sockets do not work)."""
    base = Path(tempfile.gettempdir()) / f"llmaas-links-{os.getuid()}"
    base.mkdir(mode=0o700, exist_ok=True)
    return str(base / f"{replica_id}.sock")


async def send(writer: asyncio.StreamWriter, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    writer.write(_HEADER.pack(len(data)) + data)
    await writer.drain()


async def receive(reader: asyncio.StreamReader) -> Any:
    (n,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    if n > MAX_FRAME:
        raise ConnectionError(f"a link frame of {n} bytes")
    return pickle.loads(await reader.readexactly(n))


class LinkServer:
    """The replica's end: serves `generate` to ingresses on its node until closed."""

    def __init__(self, path: str, generate: Generate, admit: Callable[[], bool] = lambda: True) -> None:
        """admit: whether the replica has a free slot now; if not, the ingress sends the request through the
        handle, which queues it where Serve's router and autoscaler see it."""
        self.path, self._generate, self._admit = path, generate, admit
        self._server: asyncio.Server | None = None
        self._streams: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # a dead replica's socket under the same name
        self._server = await asyncio.start_unix_server(self._serve, path=self.path)
        os.chmod(self.path, 0o600)

    async def close(self, grace_s: float) -> None:
        """Stops taking requests (the ingress then uses the handle) and lets those under way finish, up to
        grace_s; what is left is cut, and its ingress meters the tokens produced."""
        if self._server is not None:
            self._server.close()
            self._server = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        deadline = time.monotonic() + grace_s
        while self._streams and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for task in list(self._streams):
            task.cancel()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._streams.add(task)
        left = asyncio.Event()

        def on_close(_: asyncio.Task[bytes]) -> None:
            left.set()
            task.cancel()

        watch: asyncio.Task[bytes] | None = None
        try:
            request, adapter_path = await receive(reader)
            if not self._admit():
                await send(writer, None)
                return
            # The ingress sends nothing more: a read that returns is its close, which aborts the sequence.
            watch = asyncio.create_task(reader.read(1))
            watch.add_done_callback(on_close)
            outputs = self._generate(request, adapter_path)
            try:
                async for out in outputs:
                    await send(writer, out)
            except LlmaasError as e:
                await send(writer, e)
            except Exception as e:  # as the handle path reports a replica's own fault
                log.exception("link: generate failed")
                await send(writer, EngineUnavailableError(f"the engine failed: {e}"))
            finally:
                await outputs.aclose()
        except asyncio.CancelledError:
            if not left.is_set():
                raise  # the replica is stopping
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            if watch is not None:
                watch.remove_done_callback(on_close)
                watch.cancel()
            self._streams.discard(task)
            writer.close()


async def connect(path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """The ingress's end; OSError when the replica is gone or not listening (the caller uses the handle)."""
    return await asyncio.open_unix_connection(path)
