"""The browser pages: / and the client's files under /static/ (public, like any login page)."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from web_demo.server.errors import NotFound

MAX_STATIC_PATH_CHARS = 512


class WebDemo:
    """Serves one client directory; `page` (a file in it) answers `/`, or `missing` when absent.

    Each service has its own page: the S2S demo's index.html, asr/index.html, tts/index.html."""

    def __init__(self, static_dir: Path, *, page: str = "index.html",
                 missing: str = "Fun-Audio-Chat server: connect a client to /api/chat") -> None:
        self._dir = static_dir.resolve()
        self._page, self._missing = page, missing

    def mount(self, app: web.Application) -> None:
        app.router.add_get("/", self.index)
        app.router.add_get("/static/{path:.+}", self.static_file)

    async def index(self, request: web.Request) -> web.StreamResponse:
        page = self._dir / self._page
        if page.is_file():
            return web.FileResponse(page)
        return web.Response(text=self._missing)

    async def static_file(self, request: web.Request) -> web.StreamResponse:
        """Serves files from the client directory only; anything else is a 404."""
        name = request.match_info["path"]
        if len(name) > MAX_STATIC_PATH_CHARS or "\x00" in name:
            raise NotFound("no such file")
        try:
            path = (self._dir / name).resolve()
            found = path.is_relative_to(self._dir) and path.is_file()
        except OSError:  # e.g. a path component longer than the file system allows
            found = False
        if not found:
            raise NotFound("no such file")
        return web.FileResponse(path)
