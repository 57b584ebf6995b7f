"""``multimodal serve``: a search page and a JSON endpoint over one index (Starlette app, run by uvicorn).

Routes:

* ``GET /``: the page: a text box, an image/audio upload, a grid of hits (thumbnails,
  audio players, captions) with their scores. ``/?q=seven`` runs that query on load.
* ``GET /api/search?text=...&k=10``: a text query; ``POST /api/search?modality=image&k=10``
  with the file's bytes as the body: an image or audio query. Both answer
  ``{"query": ..., "hits": [{"rank", "id", "score", "key", "source", "caption", "media"}]}``;
  errors answer ``{"error": "..."}`` with status 400 (bad query), 413 (upload too large).
* ``GET /media/{id}``: the bytes of row ``id`` (``?thumb=1``: an image at most 256 px).
* ``GET /api/info``: the index's modality, size and checkpoint, and the query modalities.

What is served is only what the index records, looked up by row id: no path from a
request is ever opened. Uploads are limited to ``max_upload_bytes`` (read in pieces,
refused as soon as they pass it), text queries to ``MAX_TEXT_CHARS``. The server binds
127.0.0.1 unless told otherwise.
"""
from __future__ import annotations

import asyncio
import io
import threading
from pathlib import Path
from typing import Any

from multimodal.data.modalities.registry import CAPTION_MODALITY, MEDIA_MODALITIES, get_modality
from multimodal.apps.search.vector_index import SearchIndex
from multimodal.apps.search.media import MediaReader
from multimodal.apps.search.query import QUERY_ERRORS, check_model, describe_hits, embed_query

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_UPLOAD = 10 << 20
MAX_TEXT_CHARS = 1000
MAX_K = 100
DEFAULT_K = 12
THUMBNAIL_PIXELS = 256
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": ("default-src 'none'; img-src 'self'; media-src 'self'; style-src 'unsafe-inline'; "
                                "script-src 'unsafe-inline'; connect-src 'self'; form-action 'none'; frame-ancestors 'none'"),
    "Referrer-Policy": "no-referrer",
}

_PAGE = Path(__file__).with_name("serve_page.html")


def _starlette():
    try:
        import starlette  # noqa: F401
    except ImportError:
        raise ValueError("multimodal serve needs the serve extra: pip install 'multimodal-contrastive[serve]'") from None


class _BadQuery(ValueError):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _thumbnail(modality: str, data: bytes, media: str) -> tuple[bytes, str]:
    """A picture at most THUMBNAIL_PIXELS on its longer side: a small one as it is; a larger one
    decoded as training decodes it (``Modality.thumbnail``: transparency onto white), as JPEG."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header only
            if max(image.size) <= THUMBNAIL_PIXELS:
                return data, media
    except (UnidentifiedImageError, OSError):
        pass
    picture = get_modality(modality).thumbnail(data, THUMBNAIL_PIXELS)
    if picture is None:
        return data, media
    out = io.BytesIO()
    picture.convert("RGB").save(out, format="JPEG", quality=85)
    return out.getvalue(), "image/jpeg"


class SearchService:
    """What the routes call: queries embedded and searched one at a time, media looked up by row id."""

    def __init__(self, index: SearchIndex, model, *, max_upload_bytes: int = DEFAULT_MAX_UPLOAD) -> None:
        check_model(index, model)
        self.index, self.model, self.max_upload_bytes = index, model, max_upload_bytes
        self.media = MediaReader(index.modality)
        self._model_lock = threading.Lock()  # one query at a time through the model: it uses every core already

    def info(self) -> dict:
        return {"modality": self.index.modality, "count": self.index.count, "dim": self.index.dim,
                "index_type": self.index.plan.factory, "checkpoint": self.index.checkpoint_id,
                "query_modalities": list(self.model.modalities), "max_upload_bytes": self.max_upload_bytes,
                "max_k": MAX_K}

    def search(self, modality: str, query: Any, k: int) -> dict:
        if modality not in self.model.modalities:
            raise _BadQuery(f"this checkpoint cannot embed {modality} queries; it encodes {self.model.modalities}")
        with self._model_lock:
            try:
                vectors = embed_query(self.model, modality, query)  # (1, E)
            except QUERY_ERRORS as error:
                raise _BadQuery(f"the {modality} query cannot be read: {error}") from None
        hits = describe_hits(self.index.search(vectors, k)[0])
        for hit in hits:
            hit["media"] = f"/media/{hit['id']}" if get_modality(self.index.modality).reads_files and hit["source"] else None
        caption = {} if get_modality(modality).reads_files else {CAPTION_MODALITY: query}  # an upload is not echoed
        return {"query": {"modality": modality, **caption},
                "index_modality": self.index.modality, "hits": hits}

    def media_of(self, id: int, thumbnail: bool) -> tuple[bytes, str] | None:
        if not 0 <= id < self.index.count:
            return None
        key, source, _ = self.index.item(id)
        found = self.media.read(key, source)
        if found is not None and thumbnail and get_modality(self.index.modality).page_element == "img":
            return _thumbnail(self.index.modality, *found)
        return found


def _k(params) -> int:
    text = params.get("k", str(DEFAULT_K))
    if not text.isdigit() or not 1 <= int(text) <= MAX_K:
        raise _BadQuery(f"k must be an integer from 1 to {MAX_K}, got {text!r}")
    return int(text)


async def _read_limited(request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _BadQuery(f"the upload holds {int(declared)} bytes; the limit is {limit}", status=413)
    body = bytearray()
    async for piece in request.stream():
        body.extend(piece)
        if len(body) > limit:
            raise _BadQuery(f"the upload passes the limit of {limit} bytes", status=413)
    if not body:
        raise _BadQuery("the upload is empty: send the image or audio file as the request body")
    return bytes(body)


def create_app(service: SearchService):
    """The Starlette application of ``service``."""
    _starlette()
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    page = _PAGE.read_text(encoding="utf-8")

    def error(message: str, status: int = 400) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=SECURITY_HEADERS)

    async def home(request):
        return HTMLResponse(page, headers=SECURITY_HEADERS)

    async def info(request):
        return JSONResponse(service.info(), headers=SECURITY_HEADERS)

    async def search(request):
        try:
            k = _k(request.query_params)
            if request.method == "GET":
                # A GET asks in words: ?text=... (the caption modality's name).
                text = request.query_params.get(CAPTION_MODALITY, "")
                if not text.strip():
                    raise _BadQuery("give a text query: /api/search?text=...")
                if len(text) > MAX_TEXT_CHARS:
                    raise _BadQuery(f"a text query is at most {MAX_TEXT_CHARS} characters, got {len(text)}")
                modality, query = CAPTION_MODALITY, text
            else:
                modality = request.query_params.get("modality", "")
                if modality not in MEDIA_MODALITIES:
                    raise _BadQuery(f"modality must be {' or '.join(MEDIA_MODALITIES)} for an upload, got {modality!r}")
                query = await _read_limited(request, service.max_upload_bytes)
            result = await asyncio.to_thread(service.search, modality, query, k)
        except _BadQuery as bad:
            return error(str(bad), bad.status)
        return JSONResponse(result, headers=SECURITY_HEADERS)

    async def media(request):
        found = await asyncio.to_thread(service.media_of, request.path_params["id"], request.query_params.get("thumb") == "1")
        if found is None:
            return error("no such media", 404)
        data, media_type = found
        return Response(data, media_type=media_type, headers={**SECURITY_HEADERS, "Cache-Control": "max-age=3600"})

    return Starlette(routes=[
        Route("/", home),
        Route("/api/info", info),
        Route("/api/search", search, methods=["GET", "POST"]),
        Route("/media/{id:int}", media),
    ])


def run_server(app, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, sock=None) -> None:
    """Serves ``app`` with uvicorn until interrupted (``sock``: an already bound socket, e.g. port 0 in tests).

    On Ctrl-C (SIGINT) uvicorn stops serving, then raises the signal again once its
    own handler is removed, so this raises KeyboardInterrupt after a clean shutdown;
    the command line turns that into a one-line message.
    """
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    server.run(sockets=[sock] if sock is not None else None)


__all__ = ["DEFAULT_HOST", "DEFAULT_MAX_UPLOAD", "DEFAULT_PORT", "MAX_K", "SearchService", "create_app", "run_server"]
