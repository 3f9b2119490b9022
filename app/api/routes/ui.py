"""The dashboard: static files from app/ui/static at /ui, under a strict Content-Security-Policy.

The page is plain HTML, CSS and JavaScript modules shipped inside the package (no build step, no CDN),
and talks to the public /v1 API only, with the API key the user typed (kept in sessionStorage).
"""

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import RedirectResponse, Response

from app.errors import NotFound

router = APIRouter(tags=["ui"], include_in_schema=False)

# No inline script or style, nothing from another origin (artifact downloads are blob: links, which
# CSP does not govern; the key travels only in fetch() headers).
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}
MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
               ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}


def _static_files() -> dict[str, bytes]:
    """Read every shipped file once: the names are fixed, so no request path ever reaches the filesystem."""
    root = resources.files("app.ui") / "static"
    return {entry.name: entry.read_bytes() for entry in root.iterdir()
            if entry.is_file() and any(entry.name.endswith(ext) for ext in MEDIA_TYPES)}


FILES = _static_files()


def _serve(name: str) -> Response:
    body = FILES.get(name)
    if body is None:
        raise NotFound(f"no dashboard file {name!r}")
    media_type = MEDIA_TYPES[name[name.rindex("."):]]
    return Response(body, media_type=media_type, headers=SECURITY_HEADERS)


@router.get("/ui")
async def dashboard() -> Response:
    """Serve the dashboard's page."""
    return _serve("index.html")


@router.get("/ui/")
async def dashboard_slash() -> RedirectResponse:
    """Send /ui/ to /ui, so relative paths resolve one way."""
    return RedirectResponse("/ui", status_code=308)


@router.get("/ui/static/{name}")
async def dashboard_file(name: str) -> Response:
    """Serve one of the dashboard's scripts or stylesheets."""
    return _serve(name)
