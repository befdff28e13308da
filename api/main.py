"""The gateway's app factory. HTTP only; never imports torch.

``uvicorn --factory serve:create_app`` serves either mode (the entry point hands embedded mode its in-process worker);
``uvicorn --factory api.main:create_app`` serves distributed mode alone (BROKER_URL set), as the slim image does.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

from api import errors
from api.browser import BrowserGuard, SecurityHeaders, playground_csp, url_origin
from api.compat import a1111, comfyui, replicate, replicate_files
from api.config import Settings
from api.deps import tenant
from api.limits import BodySizeLimit
from api.routes import files, generate, health, jobs, models, uploads, usage, webhooks
from api.state import InProcessWorker, build_backends
from core import __version__

# the API docs pages load their scripts from a CDN: one exact release each, never a moving major version
SWAGGER_JS = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5.35.0/swagger-ui-bundle.js"
SWAGGER_CSS = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5.35.0/swagger-ui.css"
REDOC_JS = "https://cdn.jsdelivr.net/npm/redoc@2.5.2/bundles/redoc.standalone.js"
STATIC = Path(__file__).resolve().parent / "static"  # the playground: plain HTML, CSS and JavaScript, no build step

# a webhook body by the API its job came through: a Replicate prediction's webhook carries the prediction
WEBHOOK_SHAPES = {"replicate": replicate.webhook_body}

API_DESCRIPTION = """REST inference service for diffusion models with a durable job queue.

Every job POST answers 202 with the job; poll `GET /v1/jobs/{id}?wait=N`, stream `GET /v1/jobs/{id}/events`, or
cancel with `POST /v1/jobs/{id}/cancel`. Errors are `{"error": {"code", "message", "field"}}`."""


def create_app(settings: Settings | None = None, worker: InProcessWorker | None = None) -> FastAPI:
    """The app of ``settings`` (read from the environment when None). Embedded mode (BROKER_URL unset) runs its jobs
    on ``worker``, which the entry point composes (``serve.create_app``); without one the app refuses to start."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        backends = build_backends(settings, worker, WEBHOOK_SHAPES)
        app.state.backends = backends
        backends.start()
        log = logging.getLogger("diffuserve.api")
        if settings.distributed and not settings.s3_bucket and not settings.signing_key:
            log.warning(
                "SIGNING_KEY is unset and outputs are on local disk: every gateway that serves /files must "
                "share SIGNING_KEY (or DATA_DIR, where the key is kept); URLs signed by one gateway are "
                "refused by another that does not"
            )
        log.info("diffuserve %s ready in %s mode", __version__, backends.mode)
        try:
            yield
        finally:
            backends.close()

    app = FastAPI(
        title="diffuserve",
        version=__version__,
        description=API_DESCRIPTION,
        lifespan=lifespan,
        generate_unique_id_function=lambda route: route.name,  # operation ids: txt2img, get_job, ...
        docs_url=None,  # served below with their scripts pinned to one release
        redoc_url=None,
    )
    # inside CatchAll (errors.install): its refusals carry X-Request-ID like every other answer
    app.add_middleware(BrowserGuard, allowed_hosts=settings.allowed_host_names())
    errors.install(app)
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(tenant)], responses=errors.ERROR_RESPONSES)
    v1.include_router(generate.router, tags=["generate"])
    v1.include_router(jobs.router, tags=["jobs"])
    v1.include_router(uploads.router, tags=["uploads"])
    v1.include_router(models.router, tags=["models"])
    v1.include_router(webhooks.router, tags=["webhooks"])
    v1.include_router(usage.router, tags=["usage"])
    v1.include_router(replicate_files.router, tags=["replicate"])
    app.include_router(v1)
    app.include_router(replicate.router, tags=["replicate"])
    app.include_router(a1111.router, tags=["a1111"])
    app.include_router(a1111.controlnet_router, tags=["a1111"])
    app.include_router(comfyui.router, tags=["comfyui"])
    app.include_router(health.router, tags=["health"])
    app.include_router(files.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json", title="diffuserve", swagger_js_url=SWAGGER_JS, swagger_css_url=SWAGGER_CSS
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title="diffuserve", redoc_js_url=REDOC_JS)

    @app.get("/", include_in_schema=False)
    async def playground() -> FileResponse:
        """The web playground (api/static): every control talks to the public API."""
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.add_middleware(
        BodySizeLimit,
        default_limit=settings.max_body_bytes,
        limits_by_prefix={
            prefix: settings.max_upload_bytes + 64 * 1024 for prefix in ("/v1/uploads", "/v1/files", "/upload/")
        },
    )
    app.add_middleware(SecurityHeaders, csp=lambda: playground_csp(output_origins(app)))  # outermost: every answer
    return app


def output_origins(app: FastAPI) -> list[str]:
    """The origin that serves outputs when it is not the service's own (an S3 endpoint signs its URLs), which the
    playground shows as images and videos."""
    origins = getattr(app.state, "output_origins", None)
    if origins is None:
        backends = getattr(app.state, "backends", None)
        if backends is None:  # the lifespan has not run: nothing is served yet
            return []
        try:
            origin = url_origin(backends.storage.url("csp-probe", ""))  # signing is local: no request to storage
        except Exception:  # noqa: BLE001 - no credentials yet, say: outputs are not shown either; asked again
            return []
        origins = app.state.output_origins = [origin] if origin else []
    return origins
