"""HTTP server for package downloads (signed, with range requests) and uploads."""

from __future__ import annotations

from aiohttp import web

from otaflow.packages import PackageStore


def routes(store: PackageStore) -> list[web.RouteDef]:
    async def download(request: web.Request) -> web.StreamResponse:
        file_path = request.match_info["path"]
        reason = store.check(
            file_path,
            request.query.get("Expires", ""),
            request.query.get("Signature", ""),
        )
        if reason:
            raise web.HTTPForbidden(text=reason)
        try:
            path = store.path(file_path)
        except ValueError:
            raise web.HTTPForbidden(text="bad path") from None
        if not path.is_file():
            raise web.HTTPNotFound()
        # FileResponse answers Range requests (206) for resumable downloads.
        return web.FileResponse(path)

    async def upload(request: web.Request) -> web.Response:
        file_path = request.match_info["path"]
        reason = store.check(
            file_path,
            request.query.get("Expires", ""),
            request.query.get("Signature", ""),
            method="PUT",
        )
        if reason:
            raise web.HTTPForbidden(text=reason)
        data = await request.read()
        stored = store.add_bytes(file_path, data)
        return web.json_response(
            {
                "FilePath": stored.file_path,
                "Size": stored.size,
                "Sha256": stored.sha256,
                "Md5": stored.md5,
            }
        )

    return [
        web.get("/packages/{path:.+}", download),
        web.put("/packages/{path:.+}", upload),
        web.post("/packages/{path:.+}", upload),
    ]


def make_app(store: PackageStore) -> web.Application:
    app = web.Application(client_max_size=1024 * 1024 * 1024)
    app.add_routes(routes(store))
    return app
