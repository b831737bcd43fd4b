"""The /console routes: the page, its two static files, sign-in, sign-out and the session's view.

Everything else the page shows or changes goes through the /admin and /audit APIs (see
gateway.console.middleware for how the session cookie reaches them).

| route | what |
| --- | --- |
| ``GET /console`` | the page (one HTML shell; console.js draws the views the caller's roles allow) |
| ``GET /console/static/{console.js,console.css}`` | the page's script and style, from the package |
| ``GET /console/session`` | who is signed in: subject, team, roles, CSRF token; or ``signed_in: false`` |
| ``POST /console/session`` ``{"api_key": ...}`` | sign in with an API key (where no SSO is configured too) |
| ``POST /console/session/team`` ``{"team": ...}`` | work as another team the provider's token names |
| ``POST /console/sign-out`` | end the session (CSRF token needed) |
| ``GET /console/oidc/start`` → provider → ``GET /console/oidc/callback`` | sign in with the identity provider |

Anyone may start a single sign-on, and each start keeps a login in flight until the browser returns:
starts are limited per client address (429 with Retry-After, ``console.sign_in_starts_per_minute``)
and the store keeps at most ``console.max_pending_sign_ins`` of them.

Sign-in, sign-out and a refused sign-in are written to the audit log (``console.sign_in``,
``console.sign_out``, ``console.sign_in_refused``).
"""
# No `from __future__ import annotations`: FastAPI must see the request parameters' types as objects.
import hashlib
import logging
from importlib import resources
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from gateway.audit.records import Actor
from gateway.auth.errors import AuthenticationError, IdentityProviderUnavailable, PermissionDenied
from gateway.auth.http_errors import auth_error_response
from gateway.auth.principal import Principal
from gateway.console.middleware import same_origin
from gateway.console.oidc_login import OIDCLogin, SignInFailed
from gateway.console.rate_limit import AddressRateLimit
from gateway.console.sessions import COOKIE, Session, SessionStore
from gateway.console.settings import ConsoleSettings
from gateway.http.errors import OpenAIError, RateLimited
from gateway.http.plumbing import context_for
from gateway.identifiers import TEAM_NAME_MAX
from gateway.quota.headers import retry_after_headers

log = logging.getLogger("ward.console")

LOGIN_COOKIE = "ward_console_login"
LOGIN_PATH = "/console/oidc"
# The longest redirect URI a login in flight may keep: it is built from the request's Host (without
# console.public_url), so this bounds every record a caller can make the store keep.
MAX_REDIRECT_URI = 512
STATIC = {"console.js": "text/javascript; charset=utf-8", "console.css": "text/css; charset=utf-8"}


class TeamChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    team: str = Field(min_length=1, max_length=TEAM_NAME_MAX)


class KeySignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    api_key: str = Field(min_length=1, max_length=512)


def _asset(name: str) -> bytes:
    return resources.files("gateway.console").joinpath("static", name).read_bytes()


def _error(status: int, message: str, code: str) -> JSONResponse:
    body = {"error": {"message": message, "type": "authentication_error" if status == 401 else "invalid_request_error",
                      "param": None, "code": code}}
    return JSONResponse(body, status_code=status)


def _openai_error(exc: OpenAIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)


def _with_bearer(request: Request, credential: str, team: str | None = None) -> Request:
    """A copy of request that carries credential (and a chosen team) as the API's headers."""
    headers = [(k, v) for k, v in request.scope["headers"] if k not in (b"authorization", b"x-ward-team", b"cookie")]
    headers.append((b"authorization", f"Bearer {credential}".encode()))
    if team is not None:
        headers.append((b"x-ward-team", team.encode()))
    return Request({**request.scope, "headers": headers})


def _session_ref(session: Session) -> str:
    """How the log names a session: a digest of its id, never the id (the cookie's secret) itself."""
    return hashlib.sha256(session.id.encode()).hexdigest()[:16]


def _view(principal: Principal, session: Session) -> dict[str, Any]:
    return {
        "signed_in": True,
        "subject": principal.subject,
        "team": principal.team,
        "roles": sorted(r.value for r in principal.roles),
        "method": session.method,
        "csrf_token": session.csrf,
        "teams": list(session.teams),  # the teams to choose from (a provider's token naming several)
    }


def build_console_router(settings: ConsoleSettings, sessions: SessionStore, oidc: OIDCLogin | None) -> APIRouter:
    router = APIRouter(prefix="/console", include_in_schema=False)
    starts = AddressRateLimit(settings.sign_in_starts_per_minute)

    def authenticator(request: Request):
        return request.app.state.ward.authenticator

    def secure(request: Request) -> bool:
        """Cookies are Secure when browsers reach the console over HTTPS (directly or through a proxy)."""
        if settings.public_url is not None:
            return settings.public_url.startswith("https://")
        return request.url.scheme == "https"

    async def audit(request: Request, who: Principal | Actor, action: str, after: dict[str, Any]) -> None:
        services = getattr(request.app.state, "audit_services", None)
        if services is not None:
            await services.log.record_admin_change(who, action, "console:session", None, after)

    def set_session_cookie(response: Response, request: Request, session: Session) -> None:
        response.set_cookie(COOKIE, session.id, max_age=settings.session_ttl_s, path="/", httponly=True,
                            secure=secure(request), samesite="strict")

    async def sign_in(request: Request, credential: str, method: str) -> tuple[Principal, Session]:
        teams: list[str] = []
        try:
            principal = await authenticator(request).authenticate(_with_bearer(request, credential))
        except PermissionDenied as exc:
            # A provider's token naming several teams: the first is chosen, the page offers the others.
            if exc.code != "team_ambiguous" or oidc is None or method != "oidc":
                raise
            teams = oidc.teams_of(credential)
            if not teams:
                raise
            principal = await authenticator(request).authenticate(_with_bearer(request, credential, teams[0]))
        session = await sessions.create(credential, principal.subject, principal.team, method)
        if teams:
            session.teams, session.team_choice = teams, principal.team
            await sessions.update(session)
        await audit(request, principal, "console.sign_in", {"method": method, "session": _session_ref(session)})
        return principal, session

    async def refused(request: Request, method: str, reason: str) -> None:
        client = request.client.host if request.client else None
        actor = Actor(subject=None, team=None, auth_method=method)
        await audit(request, actor, "console.sign_in_refused", {"method": method, "reason": reason, "client": client})

    @router.get("")
    @router.get("/")
    async def page() -> Response:
        return Response(_asset("console.html"), media_type="text/html; charset=utf-8")

    @router.get("/static/{name}")
    async def static(name: str) -> Response:
        if name not in STATIC:
            return _error(404, "Not found.", "not_found")
        return Response(_asset(name), media_type=STATIC[name])

    @router.get("/session")
    async def current(request: Request) -> Any:
        session: Session | None = request.scope.get("ward.console_session")
        signed_out = {"signed_in": False, "oidc": oidc is not None}
        if session is None:
            return signed_out
        try:
            principal = await authenticator(request).authenticate(request)
        except (AuthenticationError, PermissionDenied):
            await sessions.end(session.id)  # the key was revoked or the token expired: the session is over
            return signed_out
        return {**_view(principal, session), "oidc": oidc is not None}

    @router.post("/session")
    async def sign_in_with_key(request: Request, body: KeySignIn) -> Any:
        if not same_origin(list(request.scope["headers"]), settings.public_url):
            return _error(403, "Sign in from the console's own page.", "csrf_failed")
        try:
            principal, session = await sign_in(request, body.api_key.strip(), "api_key")
        except (AuthenticationError, PermissionDenied) as exc:
            await refused(request, "api_key", type(exc).__name__)
            return _error(401, "The API key was not accepted.", "invalid_api_key")
        response = JSONResponse(_view(principal, session))
        set_session_cookie(response, request, session)
        return response

    @router.post("/session/team")
    async def choose_team(request: Request, body: TeamChoice) -> Any:
        """Another of the teams the provider's token names (CSRF token needed, like every change)."""
        session: Session | None = request.scope.get("ward.console_session")
        if session is None or body.team not in session.teams:
            return _error(403, "This sign-in does not name that team.", "team_not_granted")
        principal = await authenticator(request).authenticate(_with_bearer(request, session.credential, body.team))
        before = session.team_choice
        session.team_choice, session.team = body.team, principal.team
        await sessions.update(session)
        await audit(request, principal, "console.team", {"team": body.team, "before": before, "session": _session_ref(session)})
        return _view(principal, session)

    @router.post("/sign-out")
    async def sign_out(request: Request) -> Any:
        # The middleware let this through only with the session's CSRF token.
        session: Session | None = request.scope.get("ward.console_session")
        response = JSONResponse({"signed_in": False})
        response.delete_cookie(COOKIE, path="/", httponly=True, secure=secure(request), samesite="strict")
        if session is None:
            return response
        await sessions.end(session.id)
        actor = Actor(subject=session.subject, team=session.team, auth_method=session.method)
        await audit(request, actor, "console.sign_out", {"method": session.method, "session": _session_ref(session)})
        return response

    @router.get("/oidc/start")
    async def oidc_start(request: Request) -> Any:
        if oidc is None:
            return _error(404, "No identity provider is configured for the console.", "oidc_not_configured")
        wait_s = starts.acquire(context_for(request).client_address)
        if wait_s > 0:
            return _openai_error(RateLimited(
                "Too many sign-ins were started from this address; try again shortly.",
                error_type="requests", code="rate_limit_exceeded", headers=retry_after_headers(wait_s)))
        redirect_uri = (settings.public_url + LOGIN_PATH + "/callback" if settings.public_url
                        else str(request.url_for("console_oidc_callback")))
        if len(redirect_uri) > MAX_REDIRECT_URI:
            return _error(400, "The request's Host is too long.", "invalid_host")
        try:
            url, state = await oidc.start(redirect_uri)
        except SignInFailed as exc:
            log.warning("console sign-in could not start: %s", exc)
            return auth_error_response(IdentityProviderUnavailable())  # 503 with Retry-After, as for API calls
        response = RedirectResponse(url, status_code=303)
        # Lax, not Strict: the browser must send it back on the provider's redirect to the callback.
        response.set_cookie(LOGIN_COOKIE, state, max_age=600, path=LOGIN_PATH, httponly=True,
                            secure=secure(request), samesite="lax")
        return response

    @router.get("/oidc/callback", name="console_oidc_callback")
    async def oidc_callback(request: Request, state: str | None = None, code: str | None = None) -> Any:
        if oidc is None:
            return _error(404, "No identity provider is configured for the console.", "oidc_not_configured")
        try:
            token = await oidc.finish(state, code, request.cookies.get(LOGIN_COOKIE))
            _, session = await sign_in(request, token, "oidc")
        except (SignInFailed, AuthenticationError, PermissionDenied) as exc:
            await refused(request, "oidc", type(exc).__name__)
            log.info("console sign-in refused: %s", exc)
            response = RedirectResponse("/console#signin-refused", status_code=303)
        else:
            response = RedirectResponse("/console", status_code=303)
            set_session_cookie(response, request, session)
        response.delete_cookie(LOGIN_COOKIE, path=LOGIN_PATH)
        return response

    return router

