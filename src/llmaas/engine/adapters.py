"""The engine's LoRA adapter cache.

Adapters are registered by name and path (cheap, nothing loaded), loaded on first use, and evicted
least-recently-used beyond `max_loaded`. An adapter is pinned while anything uses it (a queued or
running sequence, a score/embed call) and is never evicted while pinned: the cap is soft, exceeded
rather than failing a request when every loaded adapter is in use.

Everything here runs on the event loop. Loads and unloads are passed in as coroutines: the engine
loads on a worker thread (file reads, allocations) and unloads on the scheduler thread, between
decode steps, so that no decode can be using the adapter when it is freed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from llmaas.core.errors import AdapterNotFoundError, ConflictError

log = logging.getLogger("llmaas.engine.adapters")


@dataclass(eq=False)
class _Entry:
    name: str
    path: str
    registered: bool = True  # False once unregistered: freed, then forgotten, when its last user is done
    loaded: bool = False
    refs: int = 0  # users pinning it
    last_used: float = 0.0
    evicting: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # serialises this adapter's load/unload


class AdapterCache:
    def __init__(
        self,
        load: Callable[[str, str], Awaitable[None]],
        unload: Callable[[str], Awaitable[None]],
        max_loaded: int,
        on_change: Callable[[int], None] | None = None,
    ) -> None:
        if max_loaded < 1:
            raise ValueError("max_loaded must be at least 1")
        self._load, self._unload, self._max, self._on_change = load, unload, max_loaded, on_change
        self._entries: dict[str, _Entry] = {}
        self._tasks: set[asyncio.Task] = set()

    # -- registration --------------------------------------------------------------------------
    def register(self, name: str, path: str) -> None:
        """Make `name` usable; idempotent. Another path for a loaded name is a conflict: a loaded
        adapter's file is never swapped under running sequences (unregister it first)."""
        path = str(path)
        e = self._entries.get(name)
        if e is None:
            self._entries[name] = _Entry(name, path)
            return
        if e.path != path:
            if e.loaded or e.refs or e.evicting:
                raise ConflictError(f"the adapter {name!r} is loaded from another file; unload it first")
            e.path = path
        e.registered = True

    async def unregister(self, name: str) -> None:
        """Forget `name`: new requests for it fail at once. It is freed now if idle, otherwise when its
        last sequence finishes. Unknown names are ignored."""
        e = self._entries.get(name)
        if e is None:
            return
        e.registered = False
        if e.refs == 0 and not e.evicting:
            if e.loaded:
                e.evicting = True
                await self._unload_entry(e)
            else:
                del self._entries[name]

    def is_registered(self, name: str) -> bool:
        e = self._entries.get(name)
        return e is not None and e.registered

    def loaded(self) -> list[str]:
        """Loaded adapters, least recently used first."""
        return [e.name for e in sorted(self._entries.values(), key=lambda e: e.last_used) if e.loaded]

    # -- use -----------------------------------------------------------------------------------
    async def acquire(self, name: str) -> None:
        """Pin `name`, loading it if needed. Raises AdapterNotFoundError, or EngineError if it cannot load."""
        e = self._entries.get(name)
        if e is None or not e.registered:
            raise AdapterNotFoundError(name)
        e.refs += 1  # before any await: an eviction racing with the load must see it pinned
        try:
            if not e.loaded:
                async with e.lock:  # waits out an unload in progress, then loads again
                    if not e.loaded:
                        await self._load(e.name, e.path)
                        e.loaded = True
                        self._changed()
        except BaseException:
            self.release(name)
            raise
        e.last_used = time.monotonic()
        self._evict()

    def release(self, name: str) -> None:
        e = self._entries.get(name)
        if e is None:
            return
        e.refs -= 1
        e.last_used = time.monotonic()
        if e.refs == 0:
            self._evict()

    # -- eviction ------------------------------------------------------------------------------
    def _evict(self) -> None:
        live = [e for e in self._entries.values() if e.loaded and not e.evicting]
        n = len(live)
        idle = sorted((e for e in live if e.refs == 0), key=lambda e: (e.registered, e.last_used))
        for e in idle:  # unregistered ones first, then least recently used
            if e.registered and n <= self._max:
                break
            e.evicting = True
            n -= 1
            task = asyncio.get_running_loop().create_task(self._unload_entry(e))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _unload_entry(self, e: _Entry) -> None:
        try:
            async with e.lock:
                if e.refs > 0 or not e.loaded:  # pinned again meanwhile: keep it
                    return
                e.loaded = False  # from here a new user waits on the lock and loads it again
                try:
                    await self._unload(e.name)
                except Exception:
                    log.exception("could not unload the LoRA adapter %s", e.name)
                    e.loaded = True
                self._changed()
        finally:
            e.evicting = False
            if not e.registered and not e.loaded and e.refs == 0 and self._entries.get(e.name) is e:
                del self._entries[e.name]

    def _changed(self) -> None:
        if self._on_change:
            self._on_change(sum(e.loaded for e in self._entries.values()))

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
