"""`voxfloat serve`: a resident HTTP service (Starlette on uvicorn) over one Verifier per worker process.

The model and the store load once per worker; audio arrives as the raw request body and is decoded from
memory. Inference runs in a worker thread, one request at a time per process (the ONNX session and the
store view are used by one thread at a time), so the event loop keeps accepting, reading bodies and
answering errors while a verify runs. Every failure a client can cause is a 4xx with {"error": "..."}.
"""
from __future__ import annotations

import hmac
import json
import logging
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any, NoReturn
from urllib.parse import unquote_to_bytes

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from voxfloat.api import DEFAULT_MAX_SECONDS, Verifier
from voxfloat.errors import UsageError, VoxfloatError
from voxfloat.files import read_regular
from voxfloat.openapi import MAX_TOP, OPENAPI
from voxfloat.runtime import AudioError, ModelError
from voxfloat.store import StoreError, check_speaker_id

log = logging.getLogger("voxfloat.serve")

CONFIG_ENV = "VOXFLOAT_SERVE_CONFIG"  # how `--workers N` hands the configuration to each worker process
TOKEN_ENV = "VOXFLOAT_SERVE_TOKEN"    # ... and the token, read once
DEFAULT_MAX_BODY_MB = 25.0            # a 60 s stereo 48 kHz float WAV is 23 MB; encoded types are far smaller
DRAIN_FACTOR = 4                      # an oversized body is read and dropped up to this many times the limit,
DRAIN_SECONDS = 2.0                   # ... for at most this long, before the 413 goes out
AUDIO_SLOTS = 8                       # bodies of the largest size a worker holds at once (its byte budget)
LOOPBACK = ("127.0.0.1", "::1", "localhost")
MAX_TOKEN_BYTES = 4096


@dataclass(frozen=True)
class ServeConfig:
    """What every worker needs to build the same service (JSON-serialisable for `--workers N`)."""

    store: str
    model: str | None = None
    device: str = "auto"
    threads: int = 1   # one request at a time per worker: more intra-op threads mostly spin on a shared box
    token_file: str | None = None
    max_body_mb: float = DEFAULT_MAX_BODY_MB
    body_seconds: float = 60.0  # a request's body must have arrived this long after its headers, else 408
    vad: bool = True   # embed only the detected speech (voxfloat.runtime.vad), as the store was enrolled
    max_seconds: float = DEFAULT_MAX_SECONDS  # the CLI's cap on speech (and, times 4 with vad, on recordings)


class ApiError(Exception):
    """A request the service refuses: HTTP status and a one-line message for {"error": ...}."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.headers = status, headers


def read_token(path: str | os.PathLike) -> str:
    """The bearer token in `path` (surrounding whitespace dropped); UsageError if unreadable, empty or not one word."""
    try:
        token = read_regular(path, UsageError, "token file", limit=MAX_TOKEN_BYTES).decode().strip()
    except UnicodeDecodeError:
        raise UsageError(f"{path}: the token file is not UTF-8 text") from None
    if not token or any(c.isspace() for c in token):
        raise UsageError(f"{path}: the token file must hold one token (no spaces)")
    return token


class BearerAuth:
    """ASGI middleware: every HTTP request needs `Authorization: Bearer <token>` (the scheme in any case, as
    RFC 9110 has it; the token compared in constant time)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app, self.expected = app, token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scheme, _, given = dict(scope["headers"]).get(b"authorization", b"").strip().partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(b" "), self.expected):
                response = JSONResponse({"error": "missing or wrong bearer token (Authorization: Bearer ...)"},
                                        status_code=401, headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def error_status(error: VoxfloatError) -> int:
    """The HTTP status for one of the package's errors met while serving a request."""
    if isinstance(error, (AudioError, ModelError)):
        return 422   # the body is not usable speech (unreadable, too short, silent, too long) or the graph refused it
    if isinstance(error, StoreError):
        return 409   # the request conflicts with the store's state (no speakers, no threshold)
    return 400       # UsageError: a bad argument


class ByteBudget:
    """Bytes of request bodies a worker may hold at once. A body reserves its size before it is read (its
    Content-Length, or the size limit when it comes chunked), so a body once admitted never waits on others and
    memory stays under the budget however many requests arrive (one event loop: no lock needed)."""

    def __init__(self, total: int) -> None:
        self.total, self.used, self.freed = total, 0, anyio.Event()

    async def take(self, n: int) -> None:
        while self.used and self.used + n > self.total:
            await self.freed.wait()
        self.used += n

    def give(self, n: int) -> None:
        if n:
            self.used -= n
            self.freed.set()
            self.freed = anyio.Event()


class Service:
    """The routes over one Verifier; every Verifier call runs in a thread, one at a time."""

    def __init__(self, config: ServeConfig, verifier: Verifier) -> None:
        self.config, self.verifier = config, verifier
        self.max_body = int(config.max_body_mb * 2**20)
        self.limiter: anyio.CapacityLimiter | None = None  # both created inside the event loop
        self.budget: ByteBudget | None = None

    async def with_audio(self, request: Request, fn: Callable[[bytes], Any]) -> Any:
        """Read the body and run fn(body) through `call`. The body first reserves its size in the worker's byte
        budget (AUDIO_SLOTS full-size bodies; 429 if that is not free within --body-timeout), then must arrive
        within --body-timeout (else 408); the reservation lasts until fn returns."""
        if self.budget is None:
            self.budget = ByteBudget(AUDIO_SLOTS * self.max_body)
        declared = self.declared_size(request)
        need = self.max_body if declared is None else declared
        if declared is not None and declared > self.max_body:
            await self.refuse_large(request, declared)
        try:
            with anyio.fail_after(self.config.body_seconds):
                await self.budget.take(need)
        except TimeoutError:
            raise ApiError(429, f"busy: request bodies in flight fill this worker's {self.budget.total / 2**20:g} MB "
                                f"for over {self.config.body_seconds:g} s; retry", {"Retry-After": "1"}) from None
        try:
            try:
                with anyio.fail_after(self.config.body_seconds):
                    audio = await self.body(request)
            except TimeoutError:
                raise ApiError(408, f"request body not received within {self.config.body_seconds:g} s "
                                    "(--body-timeout)") from None
            return await self.call(fn, audio)
        finally:
            self.budget.give(need)

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a Verifier call in the thread pool, serialised; the package's errors become ApiErrors."""
        if self.limiter is None:
            self.limiter = anyio.CapacityLimiter(1)

        def run() -> Any:
            try:
                return fn(*args, **kwargs)
            except VoxfloatError as e:
                raise ApiError(error_status(e), str(e)) from None

        return await anyio.to_thread.run_sync(run, limiter=self.limiter)

    @staticmethod
    def declared_size(request: Request) -> int | None:
        """The Content-Length, if given; ApiError 400 if it is not a number."""
        declared = request.headers.get("content-length")
        if declared is None:
            return None
        if not (declared.isascii() and declared.isdigit()):
            raise ApiError(400, f"bad Content-Length header {declared[:40]!r}")
        return int(declared)

    async def body(self, request: Request) -> bytes:
        """The request body; a chunked one is cut off (413) as soon as it passes the size limit."""
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > self.max_body:
                    chunks.clear()
                    await self.refuse_large(request, size)
                chunks.append(chunk)
        except ClientDisconnect:
            raise ApiError(400, "the client went away before its request body was complete") from None
        if size == 0:
            raise ApiError(400, "empty request body: send the audio file itself as the body")
        return b"".join(chunks)

    async def refuse_large(self, request: Request, size: int) -> NoReturn:
        """413 for a body over the limit (`size`: its Content-Length, or the bytes seen so far). Unless the client
        waits for a 100 Continue, the body is read on and dropped for a moment (up to DRAIN_FACTOR times the limit
        or DRAIN_SECONDS), so that a client still sending gets the answer rather than a reset."""
        if request.headers.get("expect", "").lower() != "100-continue":
            drained = 0
            with anyio.move_on_after(DRAIN_SECONDS):
                try:
                    async for chunk in request.stream():
                        drained += len(chunk)
                        if drained > DRAIN_FACTOR * self.max_body:
                            break
                except (ClientDisconnect, RuntimeError):  # gone, or the stream was read before
                    pass
        raise ApiError(413, f"request body too large: {size / 2**20:.1f} MB or more, the limit is "
                            f"{self.max_body / 2**20:g} MB (--max-body-mb)")

    # -- routes ------------------------------------------------------------------------------------

    async def verify(self, request: Request) -> JSONResponse:
        speaker = speaker_param(request)

        def work(audio: bytes) -> dict:
            self.verifier.check()  # a store of another model is 409 before any speaker is looked up
            if speaker not in self.verifier.speakers():
                raise ApiError(404, f"no speaker {speaker!r} enrolled in {self.config.store}")
            return self.verifier.verify(audio, speaker).as_dict()

        d = await self.with_audio(request, work)
        return JSONResponse({k: d[k] for k in ("speaker", "score", "threshold", "threshold_source", "format",
                                               "accepted")})

    async def identify(self, request: Request) -> JSONResponse:
        top = int_param(request, "top", 1, 1, MAX_TOP)
        found = await self.with_audio(request, lambda audio: self.verifier.identify(audio, top=top))
        return JSONResponse({"candidates": [{"speaker": s, "score": round(v, 6)} for s, v in found.candidates],
                             "decision": found.decision, "threshold": found.threshold,
                             "threshold_source": found.threshold_source, "format": found.format})

    async def enroll(self, request: Request) -> JSONResponse:
        speaker = speaker_param(request)
        try:
            check_speaker_id(speaker)
        except StoreError as e:
            raise ApiError(400, str(e)) from None
        replace = bool_param(request, "replace")
        report = await self.with_audio(
            request, lambda audio: self.verifier.enroll(speaker, [audio], replace=replace, extend=True, create=False))
        if not report.enrolled:
            raise ApiError(422, report.bad_files[0] if report.bad_files else f"{speaker}: nothing enrolled")
        return JSONResponse({"speaker": speaker, "utterances": report.enrolled[0][1], "replaced": replace,
                             "speakers_in_store": report.speakers_in_store})

    async def remove(self, request: Request) -> JSONResponse:
        raw = request.scope.get("raw_path") or request.url.path.encode()
        try:  # strict, as query parameters are: Starlette's own decoding replaces bytes that are not UTF-8
            speaker = unquote_to_bytes(raw.split(b"/speakers/", 1)[1]).decode()
        except UnicodeDecodeError:
            raise ApiError(400, "the speaker id in the path is not UTF-8 (percent-encode ids as UTF-8 bytes)") from None

        def work() -> dict:
            self.verifier.check()
            if not self.verifier.remove(speaker):
                raise ApiError(404, f"no speaker {speaker!r} enrolled in {self.config.store}")
            return {"removed": speaker, "speakers_in_store": len(self.verifier.speakers())}

        return JSONResponse(await self.call(work))

    async def speakers(self, request: Request) -> JSONResponse:
        def work() -> list[str]:
            self.verifier.check()
            return self.verifier.speakers()

        ids = await self.call(work)
        return JSONResponse({"speakers": ids, "count": len(ids)})

    async def health(self, request: Request) -> JSONResponse:
        info = await self.call(self.verifier.info)
        return JSONResponse({"status": "ok", **info})

    async def openapi(self, request: Request) -> JSONResponse:
        return JSONResponse(OPENAPI)


def query(request: Request) -> dict[str, str]:
    """The query parameters, each at most once, percent-decoded as strict UTF-8; ApiError 400 otherwise."""
    params: dict[str, str] = {}
    for part in request.scope["query_string"].split(b"&"):
        if not part:
            continue
        key, _, value = part.partition(b"=")
        try:
            name, text = (unquote_to_bytes(x.replace(b"+", b" ")).decode() for x in (key, value))
        except UnicodeDecodeError:
            raise ApiError(400, "the query string is not UTF-8 (percent-encode ids as UTF-8 bytes)") from None
        if name in params:
            raise ApiError(400, f"query parameter {name[:40]!r} given more than once")
        params[name] = text
    return params


def speaker_param(request: Request) -> str:
    """The required `speaker` query parameter."""
    speaker = query(request).get("speaker", "")
    if not speaker.strip():
        raise ApiError(400, "missing query parameter speaker (the speaker id)")
    return speaker


def int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    """An optional integer query parameter in [low, high], written in ASCII digits."""
    raw = query(request).get(name)
    if raw is None:
        return default
    if not re.fullmatch(r"-?[0-9]{1,12}", raw):
        raise ApiError(400, f"query parameter {name} must be an integer, got {raw[:40]!r}")
    value = int(raw)
    if not low <= value <= high:
        raise ApiError(400, f"query parameter {name} must be in {low}..{high}, got {value}")
    return value


def bool_param(request: Request, name: str) -> bool:
    """An optional true/false query parameter (false when absent)."""
    raw = query(request).get(name, "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise ApiError(400, f"query parameter {name} must be true or false, got {raw[:40]!r}")
    return raw in ("true", "1")


async def api_error(request: Request, exc: ApiError) -> JSONResponse:
    """A refused request as {"error": ...} with its status."""
    return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=exc.headers)


async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """Starlette's own 404 (no such route) and 405 (wrong method) as JSON."""
    return JSONResponse({"error": f"{exc.detail}: {request.method} {request.url.path}"}, status_code=exc.status_code,
                        headers=exc.headers)


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    """A fault of the service itself (uvicorn logs its traceback): still JSON, never a stack trace on the wire."""
    return JSONResponse({"error": f"internal error ({type(exc).__name__}); the server log has the details"},
                        status_code=500)


def create_app(config: ServeConfig, token: str | None = None, strict: bool = True) -> ASGIApp:
    """Load the model and the store once and return the ASGI application (bearer check outermost).

    `token`: the bearer token as the parent process read it (else config.token_file is read). A worker that
    uvicorn starts or restarts later runs with strict=False: a store unusable at that moment is logged and
    answered with 409 until it is fixed, as a running worker does, rather than failing the worker again and again.
    """
    if token is None and config.token_file:
        token = read_token(config.token_file)
    verifier = Verifier(config.store, config.model, device=config.device, threads=config.threads, vad=config.vad,
                        max_seconds=config.max_seconds)
    verifier.encoder  # load the model now, not on a request
    try:
        verifier.check()  # open the store and check that it belongs to the model
    except StoreError as e:
        if strict:
            raise
        log.warning("%s; answering 409 until the store is usable", e)
    service = Service(config, verifier)
    routes = [
        Route("/verify", service.verify, methods=["POST"]),
        Route("/identify", service.identify, methods=["POST"]),
        Route("/enroll", service.enroll, methods=["POST"]),
        Route("/speakers", service.speakers, methods=["GET"]),
        Route("/speakers/{speaker:path}", service.remove, methods=["DELETE"]),
        Route("/health", service.health, methods=["GET"]),
        Route("/openapi.json", service.openapi, methods=["GET"]),
    ]
    handlers: dict[Any, Callable[..., Awaitable[JSONResponse]]] = {
        ApiError: api_error, HTTPException: http_error, Exception: internal_error}
    app: ASGIApp = Starlette(routes=routes, exception_handlers=handlers)
    return BearerAuth(app, token) if token else app


def app_from_env() -> ASGIApp:
    """uvicorn's factory in each worker process of `--workers N`: configuration and token come from the parent's
    environment, so a restarted worker serves what the others serve whatever has become of the files since."""
    return create_app(ServeConfig(**json.loads(os.environ[CONFIG_ENV])), os.environ.pop(TOKEN_ENV, None), strict=False)


def serve(config: ServeConfig, host: str = "127.0.0.1", port: int = 8080, workers: int = 1) -> None:
    """Run the service until interrupted; the model, store and token are checked before the port is bound."""
    token = read_token(config.token_file) if config.token_file else None
    app = create_app(config, token)
    if not config.token_file and host not in LOOPBACK:
        log.warning("listening on %s without --token-file: anyone who reaches this address can enroll and delete "
                    "speakers", host)
    if workers == 1:
        uvicorn.run(app, host=host, port=port, log_level="info")
        return
    del app  # each worker loads its own copy; this one only proved that loading works
    os.environ[CONFIG_ENV] = json.dumps(asdict(config))
    if token:
        os.environ[TOKEN_ENV] = token  # the workers' environment is readable by this user only, as the file is
    uvicorn.run("voxfloat.serve:app_from_env", factory=True, host=host, port=port, workers=workers,
                log_level="info")
