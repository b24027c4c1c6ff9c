"""POST /v1/files with a JSON body: the HTTP side of exporting stored completions into a fine-tune file
(the export itself is serving.completion_store.export_to_file)."""

from __future__ import annotations

import asyncio

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from llmaas.api.deps import control_plane
from llmaas.control.auth.principal import Context
from llmaas.control.db.models import StoredFile
from llmaas.protocol.stored_completions import FileFromSource
from llmaas.serving.completion_store import export_to_file


async def file_from_source(request: Request, ctx: Context) -> StoredFile:
    """Parse the JSON body as a FileFromSource (a 400 like any request body when it is not one), export."""
    try:
        body = FileFromSource.model_validate_json(await request.body())
    except ValidationError as e:
        raise RequestValidationError(e.errors()) from None
    return await asyncio.to_thread(export_to_file, control_plane(request, "Files"), ctx, body)
