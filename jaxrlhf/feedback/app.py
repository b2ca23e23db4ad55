"""The annotation web app (Starlette); `python -m jaxrlhf.annotate serve` runs it under uvicorn.

Pages: `/login` (sign in with an annotator token), `/` (label the next item), `/admin` (counts; admins
only), `POST /logout`. JSON API: `GET /api/next` (the item to label, in this annotator's order, and the
progress), `POST /api/label` (see `store.Store.submit`), `GET /api/labels` (the caller's own labels only),
`GET /api/admin/summary`.

Security: every page and API call needs a signed-in annotator: a session cookie (HttpOnly, SameSite=Strict)
from `/login`, or `Authorization: Bearer <token>` for scripts. A write with the cookie must carry the
session's CSRF token (`X-CSRF-Token`, or the `csrf` field of a form); `/login` itself uses a double-submit
cookie. Failed sign-ins are limited per client address (429). Bodies over `max_request_bytes` get 413.
Model text is only ever inserted as text (`textContent` in the script, escaped in pages), and the Content
Security Policy allows scripts from this server's /static only, so a response holding `<script>` shows as
text. Errors answer one line (JSON for the API, a page otherwise); no traceback reaches a browser.
"""

from __future__ import annotations

import collections
import hmac
import secrets
import time
import urllib.parse
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from jaxrlhf.feedback import pages
from jaxrlhf.feedback.store import Annotator, LabelError, Store
from jaxrlhf.infra.http_body import HttpError, read_body, read_json_object

STATIC = Path(__file__).with_name("static")
SESSION_COOKIE, LOGIN_COOKIE = "jaxrlhf_session", "jaxrlhf_login"
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


class SignInLimiter:
    """At most `attempts` failed sign-ins per client address in any `window_s` seconds."""

    def __init__(self, attempts: int, window_s: float):
        self.attempts, self.window_s = attempts, window_s
        self.failures: dict[str, collections.deque] = collections.defaultdict(collections.deque)

    def check(self, client: str) -> None:
        recent = self.failures[client]
        while recent and recent[0] < time.monotonic() - self.window_s:
            recent.popleft()
        if len(recent) >= self.attempts:
            raise HttpError(429, f"too many failed sign-ins; wait {int(self.window_s)} seconds")

    def failed(self, client: str) -> None:
        self.failures[client].append(time.monotonic())


class SecurityHeaders:
    """ASGI middleware adding SECURITY_HEADERS to every response."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [
                    (k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items() if k.encode() not in names]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(store: Store, *, max_request_bytes: int = 64_000, sign_in_attempts: int = 10,
               sign_in_window_s: float = 60.0, secure_cookies: bool = False) -> Starlette:
    """`secure_cookies`: mark cookies Secure (serve behind HTTPS)."""
    limiter = SignInLimiter(sign_in_attempts, sign_in_window_s)

    def client_of(request: Request) -> str:
        return request.client.host if request.client else "?"

    def set_cookie(response: Response, name: str, value: str, max_age: int) -> None:
        response.set_cookie(name, value, max_age=max_age, httponly=True, samesite="strict", secure=secure_cookies,
                            path="/")

    async def who(request: Request) -> tuple[Annotator, str | None] | None:
        """(annotator, session CSRF token or None for a bearer token) or None."""
        header = request.headers.get("authorization", "")
        if header[:7].lower() == "bearer ":
            limiter.check(client_of(request))
            annotator = await run_in_threadpool(store.annotator_by_token, header[7:].strip())
            if annotator is None:
                limiter.failed(client_of(request))
                raise HttpError(401, "wrong token")
            return annotator, None
        cookie = request.cookies.get(SESSION_COOKIE)
        return await run_in_threadpool(store.session, cookie) if cookie else None

    async def api_user(request: Request, write: bool = False, admin: bool = False) -> Annotator:
        found = await who(request)
        if found is None:
            raise HttpError(401, "sign in first (or send 'Authorization: Bearer <token>')")
        annotator, csrf = found
        if write and csrf is not None and not hmac.compare_digest(
                request.headers.get("x-csrf-token", "").encode(), csrf.encode()):
            raise HttpError(403, "missing or wrong CSRF token")
        if admin and not annotator.is_admin:
            raise HttpError(403, "this needs an admin token")
        return annotator

    async def next_item(request: Request) -> JSONResponse:
        annotator = await api_user(request)
        item = await run_in_threadpool(store.next_item, annotator)
        return JSONResponse({"item": item, "progress": await run_in_threadpool(store.progress, annotator)})

    async def label(request: Request) -> JSONResponse:
        annotator = await api_user(request, write=True)
        body = await read_json_object(request, max_request_bytes)
        try:
            await run_in_threadpool(store.submit, annotator, body)
        except LabelError as e:
            raise HttpError(e.status, e.message) from None
        return JSONResponse({"stored": True, "progress": await run_in_threadpool(store.progress, annotator)})

    async def own_labels(request: Request) -> JSONResponse:
        annotator = await api_user(request)
        return JSONResponse({"annotator": annotator.name, "labels": await run_in_threadpool(store.own_labels,
                                                                                              annotator)})

    async def admin_summary(request: Request) -> JSONResponse:
        await api_user(request, admin=True)
        return JSONResponse(await run_in_threadpool(store.summary))

    async def login_page(request: Request, message: str = "", status: int = 200) -> HTMLResponse:
        nonce = secrets.token_urlsafe(24)
        response = HTMLResponse(pages.login(nonce, message), status_code=status)
        set_cookie(response, LOGIN_COOKIE, nonce, 600)
        return response

    async def login(request: Request) -> Response:
        client = client_of(request)
        limiter.check(client)
        form = urllib.parse.parse_qs((await read_body(request, max_request_bytes)).decode("utf-8", "replace"))
        nonce, token = form.get("csrf", [""])[0], form.get("token", [""])[0].strip()
        expected = request.cookies.get(LOGIN_COOKIE, "")
        if not expected or not hmac.compare_digest(nonce.encode(), expected.encode()):
            return await login_page(request, "The sign-in form expired; please try again.", 403)
        annotator = await run_in_threadpool(store.annotator_by_token, token) if token else None
        if annotator is None:
            limiter.failed(client)
            return await login_page(request, "That token is not known.", 401)
        session, _ = await run_in_threadpool(store.create_session, annotator)
        response = RedirectResponse("/admin" if annotator.is_admin else "/", status_code=303)
        set_cookie(response, SESSION_COOKIE, session, int(store.session_s))
        response.delete_cookie(LOGIN_COOKIE, path="/")
        return response

    async def logout(request: Request) -> Response:
        found = await who(request)
        if found is not None and found[1] is not None:
            form = urllib.parse.parse_qs((await read_body(request, max_request_bytes)).decode("utf-8", "replace"))
            if not hmac.compare_digest(form.get("csrf", [""])[0].encode(), found[1].encode()):
                raise HttpError(403, "missing or wrong CSRF token")
            await run_in_threadpool(store.end_session, request.cookies[SESSION_COOKIE])
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    async def page(request: Request, admin: bool = False) -> Response:
        found = await who(request)
        if found is None or found[1] is None:
            return RedirectResponse("/login", status_code=303)
        annotator, csrf = found
        if admin:
            if not annotator.is_admin:
                raise HttpError(403, "this page needs an admin token")
            return HTMLResponse(pages.admin(annotator.name, csrf, await run_in_threadpool(store.summary)))
        return HTMLResponse(pages.annotate(annotator.name, csrf))

    async def admin_page(request: Request) -> Response:
        return await page(request, admin=True)

    def error(request: Request, status: int, message: str) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": message}, status_code=status)
        return HTMLResponse(pages.error(status, message), status_code=status)

    async def http_error(request: Request, exc: HttpError) -> Response:
        return error(request, exc.status, exc.message)

    async def starlette_error(request: Request, exc: HTTPException) -> Response:  # 404, 405
        return error(request, exc.status_code, str(exc.detail))

    async def server_error(request: Request, exc: Exception) -> Response:
        # Starlette answers this from its outermost middleware, outside SecurityHeaders: add them here.
        response = error(request, 500, f"internal error ({type(exc).__name__}); the server log has the details")
        response.headers.update(SECURITY_HEADERS)
        return response

    async def no_icon(request: Request) -> Response:
        return Response(status_code=204)

    app = Starlette(routes=[
        Route("/", page, methods=["GET"]),
        Route("/favicon.ico", no_icon, methods=["GET"]),
        Route("/admin", admin_page, methods=["GET"]),
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/api/next", next_item, methods=["GET"]),
        Route("/api/label", label, methods=["POST"]),
        Route("/api/labels", own_labels, methods=["GET"]),
        Route("/api/admin/summary", admin_summary, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ], exception_handlers={HttpError: http_error, HTTPException: starlette_error, Exception: server_error})
    app.add_middleware(SecurityHeaders)
    app.state.store = store
    return app
