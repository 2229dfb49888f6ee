"""HTTP server for package downloads (signed, with range requests) and uploads.

``GET /packages/{path}?Expires=..&Signature=..`` serves a stored file to devices.
``POST /`` is the object store's PostObject form upload that GenerateOTAUploadURL's
fields describe (see ``otaflow.packages``). Errors are the object store's XML
``<Error>`` documents; none carries a stack trace or a server path.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from xml.sax.saxutils import escape

from aiohttp import BodyPartReader, web

from otaflow.packages import PackageStore, PackageUpload, UploadRefused

log = logging.getLogger("otaflow.packages")
_HOST_ID = "otaflow"
#: Form fields before ``file`` are small; anything bigger is not a PostObject form.
_MAX_FIELD_BYTES = 64 * 1024
_CHUNK = 1 << 20


def _xml_error(status: int, code: str, message: str) -> web.Response:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Error>'
        f"<Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
        f"<RequestId>{uuid.uuid4().hex.upper()}</RequestId><HostId>{_HOST_ID}</HostId></Error>"
    )
    return web.Response(status=status, text=body, content_type="application/xml")


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except UploadRefused as exc:
        return _xml_error(exc.status, exc.code, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _xml_error(exc.status, exc.reason.replace(" ", ""), exc.text or exc.reason)
    except Exception:
        # The log keeps the details; the caller learns nothing about the server.
        log.exception("package server error on %s %s", request.method, request.path)
        return _xml_error(500, "InternalError", "We encountered an internal error.")


def routes(store: PackageStore) -> list[web.RouteDef]:
    async def download(request: web.Request) -> web.StreamResponse:
        file_path = request.match_info["path"]
        reason = store.check(
            file_path,
            request.query.get("Expires", ""),
            request.query.get("Signature", ""),
        )
        if reason:
            return _xml_error(403, "AccessDenied", reason)
        try:
            path = store.path(file_path)
        except ValueError:
            return _xml_error(403, "AccessDenied", "bad path")
        if not path.is_file():
            return _xml_error(404, "NoSuchKey", "The specified key does not exist.")
        # FileResponse answers Range requests (206) for resumable downloads.
        return web.FileResponse(path)

    async def post_object(request: web.Request) -> web.Response:
        if not request.content_type.startswith("multipart/"):
            raise UploadRefused(400, "InvalidArgument", "PostObject takes a multipart form.")
        reader = await request.multipart()
        fields: dict[str, str] = {}
        upload: PackageUpload | None = None
        while True:
            part = await reader.next()
            if part is None:
                break
            if not isinstance(part, BodyPartReader):
                raise UploadRefused(400, "InvalidArgument", "Nested multipart is not supported.")
            if part.name == "file":
                # The object store's rule: every other field comes before the file, so
                # the grant is checked (and claimed) before a byte is written.
                upload = store.begin_upload(fields)
                try:
                    while chunk := await part.read_chunk(_CHUNK):
                        upload.write(chunk)
                    stored = upload.commit()
                except BaseException:
                    upload.abort()
                    raise
                break
            value = bytearray()
            while chunk := await part.read_chunk(_MAX_FIELD_BYTES):
                value += chunk
                if len(value) > _MAX_FIELD_BYTES:
                    raise UploadRefused(400, "InvalidArgument", "A form field is too big.")
            fields[part.name or ""] = value.decode("utf-8", errors="replace")
        if upload is None:
            raise UploadRefused(400, "InvalidArgument", "The form has no file field.")
        etag = f'"{stored.md5.upper()}"'
        status = fields.get("success_action_status", "204")
        if status == "201":
            location = store.url(stored.file_path)
            body = (
                '<?xml version="1.0" encoding="UTF-8"?>\n<PostResponse>'
                f"<Bucket>{_HOST_ID}</Bucket><Location>{escape(location)}</Location>"
                f"<Key>{escape(stored.file_path)}</Key><ETag>{escape(etag)}</ETag>"
                "</PostResponse>"
            )
            return web.Response(
                status=201, text=body, content_type="application/xml", headers={"ETag": etag}
            )
        return web.Response(status=200 if status == "200" else 204, headers={"ETag": etag})

    return [
        web.get("/packages/{path:.+}", download),
        web.post("/", post_object),
    ]


def make_app(store: PackageStore) -> web.Application:
    # Uploads stream to disk (never read whole); the limit applies per file in the store.
    app = web.Application(middlewares=[_errors])
    app.add_routes(routes(store))
    return app
