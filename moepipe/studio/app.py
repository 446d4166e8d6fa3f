"""The studio's HTTP side: one page (static/) and a small JSON/PNG API over a `ModelHolder`.

Every picture endpoint takes its inputs as query parameters, so an <img src> or a download link
is a plain GET. Bad input never reaches the generator: it ends in a 4xx answer
`{"detail": "<field>: <one line>"}` (an unknown query parameter included), and an unexpected
failure in a 500 answer of the same shape; the server keeps running either way. OpenAPI at /docs.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from moepipe.config.model import TRUNCATION_RANGE
from moepipe.errors import UserError
from moepipe.studio.drawing import Picture
from moepipe.studio.state import ModelHolder, Served

MAX_N = 64  # avatars in one grid
MAX_STEPS = 64  # tiles of one interpolation
MAX_SEED = 2**53 - 1  # the page keeps seeds in JavaScript numbers: exact integers up to here
STATIC = resources.files("moepipe.studio") / "static"
HEADER_SAFE = " ,:/._-@"  # left as they are in the X-Moepipe-* headers; anything else is percent-encoded

log = logging.getLogger(__name__)


class BadInput(Exception):
    """A request the model refuses (unknown attribute, unknown group, no such alias): 4xx, one line naming the field."""

    def __init__(self, field: str, message: str, status: int = 422) -> None:
        super().__init__(f"{field}: {one_line(message)}")
        self.status = status


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def validation_detail(errors: list[dict[str, Any]]) -> str:
    """FastAPI's list of validation errors as one line: 'n: Input should be ... (got 65)'."""
    if not errors:
        return "request: invalid"
    first = errors[0]
    where = [str(part) for part in first.get("loc", ()) if part not in ("query", "path", "body", "header")]
    got = first.get("input")
    shown = "" if first.get("type") == "missing" or isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return one_line(f"{'.'.join(where) or 'request'}: {first.get('msg', 'invalid')}{shown}{more}")


# -- query parameters shared by the picture endpoints ----------------------------------------------
# The dependencies below are `async def`: they never block, and FastAPI runs a plain `def` one in
# its thread pool, one hop per dependency per request.
Seed = Annotated[int, Query(ge=0, le=MAX_SEED, description="the avatar's seed (fixes its face and its fill)")]
Attributes = Annotated[str, Query(max_length=2000, description=(
    "comma-separated tags, e.g. blue_hair,twintails,smile; a group left out is drawn from the model's "
    "label prior by the seed"))]
Truncation = Annotated[float, Query(ge=TRUNCATION_RANGE[0], le=TRUNCATION_RANGE[1], allow_inf_nan=False,
                                    description="psi: 1 = full variety, toward 0 = more typical")]
Alias = Annotated[Literal["champion", "challenger"] | None, Query(
    description="draw with the version holding this alias instead of the model the studio serves")]
Download = Annotated[bool, Query(description="answer as a file download (Content-Disposition: attachment)")]


CacheKey = Annotated[str | None, Query(
    max_length=64, description="ignored: a cache key the page adds (the model version it expects)")]


async def cache_key(v: CacheKey = None) -> None:
    return None


async def interpolation_inputs(seed: Seed = 0, seed_b: Annotated[int, Query(ge=0, le=MAX_SEED)] = 1,
                         steps: Annotated[int, Query(ge=2, le=MAX_STEPS)] = 8, attributes: Attributes = "",
                         truncation: Truncation = 1.0, alias: Alias = None) -> dict[str, Any]:
    """The query of both interpolation endpoints (PNG strip and GIF)."""
    return {"seed": seed, "seed_b": seed_b, "steps": steps, "attributes": attributes, "truncation": truncation,
            "alias": alias}


Interpolation = Annotated[dict[str, Any], Depends(interpolation_inputs)]


def query_names(dependant: Any) -> set[str]:
    """The query parameters a route declares, its dependencies' included (FastAPI's Dependant tree)."""
    names = {param.alias for param in dependant.query_params}
    for sub in dependant.dependencies:
        names |= query_names(sub)
    return names


async def known_query_only(request: Request) -> None:
    """An unknown query parameter (a typo such as `atributes`) is an error, not silently ignored."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    known = query_names(dependant)
    unknown = [name for name in request.query_params if name not in known]
    if unknown:
        raise BadInput(unknown[0], f"unknown query parameter; this endpoint takes {', '.join(sorted(known)) or 'none'}")


def create_app(holder: ModelHolder, *, poll: bool = True) -> FastAPI:
    """The studio app over an opened `holder`; with `poll`, the holder follows its aliases while the app runs."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if poll:
            holder.start_polling()
        try:
            yield
        finally:
            holder.stop_polling()

    app = FastAPI(title="moepipe avatar studio", version="1", lifespan=lifespan,
                  description="Draw chibi avatars with chosen attributes from the served generator "
                              "(the registry's champion by default). Pictures carry PNG text naming "
                              "model, version, run, seed, attributes and truncation.")
    app.state.holder = holder

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": validation_detail(list(error.errors()))}, status_code=422)

    @app.exception_handler(BadInput)
    async def refused(request: Request, error: BadInput) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=error.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": one_line(error.detail)}, status_code=error.status_code,
                            headers=getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def failed(request: Request, error: Exception) -> JSONResponse:
        log.exception("studio: %s %s failed", request.method, request.url.path)
        return JSONResponse({"detail": one_line(f"internal error: {type(error).__name__}: {error}")},
                            status_code=500)

    def served(alias: str | None) -> Served:
        try:
            return holder.served(alias)
        except LookupError as error:
            raise BadInput("alias", str(error), 404) from None

    def parsed(model: Served, attributes: str) -> list[str]:
        try:
            return model.avatars.parse_attributes(attributes)
        except UserError as error:
            raise BadInput("attributes", str(error)) from None

    def answer(picture: Picture, model: Served, filename: str, download: bool) -> Response:
        shown = (f"{model.lineage.get('name')} v{model.version}" if model.version is not None
                 else str(model.lineage.get("model")))
        headers = {  # header values are latin-1: tags and paths outside ASCII travel percent-encoded
            "Cache-Control": "no-store",
            "Content-Disposition": f'{"attachment" if download else "inline"}; '
                                   f'filename="{re.sub(r"[^A-Za-z0-9._-]", "_", filename)}"',
            "X-Moepipe-Model": quote(one_line(shown), safe=HEADER_SAFE),
            "X-Moepipe-Drawn-Attributes": quote(",".join(picture.drawn), safe=HEADER_SAFE),
        }
        return Response(picture.data, media_type=picture.media_type, headers=headers)

    def stem(model: Served) -> str:
        return f"avatar-v{model.version}" if model.version is not None else "avatar"

    checks = [Depends(known_query_only), Depends(cache_key)]

    # -- the page ------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(str(STATIC / "index.html"), headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    # -- JSON ----------------------------------------------------------------------------------
    @app.get("/api/model", dependencies=checks, summary="The model that answers: version, aliases, lineage")
    def model_info() -> dict[str, Any]:
        return holder.info()

    @app.get("/api/attributes", dependencies=checks, summary="The attribute groups and limits of the served model")
    def attributes(alias: Alias = None) -> dict[str, Any]:
        avatars = served(alias).avatars
        groups = []
        if avatars.conditional:
            for name, group in avatars.groups.items():
                values = avatars.variations([0], name)[0]
                groups.append({"name": name, "multi": bool(group.get("multi")), "tags": list(group.get("tags", [])),
                               "values": values})
        elif avatars.attributes:  # an unconditional model with edit directions: each is a toggle
            groups.append({"name": "edits", "multi": True, "tags": avatars.attributes, "values": []})
        return {"conditional": avatars.conditional, "resolution": avatars.resolution, "groups": groups,
                "attributes": avatars.attributes,
                "truncation": {"min": TRUNCATION_RANGE[0], "max": TRUNCATION_RANGE[1], "default": 1.0},
                "limits": {"n": MAX_N, "steps": MAX_STEPS, "seed": MAX_SEED}}

    # -- pictures ------------------------------------------------------------------------------
    @app.get("/api/avatar.png", dependencies=checks, response_class=Response,
             responses={200: {"content": {"image/png": {}}}}, summary="One avatar at the model's resolution")
    def avatar(seed: Seed = 0, attributes: Attributes = "", truncation: Truncation = 1.0, alias: Alias = None,
               download: Download = False) -> Response:
        model = served(alias)
        tags = parsed(model, attributes)
        with holder.lock:
            picture = model.drawer.avatar(seed, tags, truncation)
        return answer(picture, model, f"{stem(model)}-seed{seed}.png", download)

    @app.get("/api/grid.png", dependencies=checks, response_class=Response,
             responses={200: {"content": {"image/png": {}}}},
             summary="Avatars of seeds seed .. seed+n-1, same attributes")
    def avatar_grid(seed: Seed = 0, n: Annotated[int, Query(ge=1, le=MAX_N)] = 8,
                    columns: Annotated[int, Query(ge=1, le=MAX_N)] = 8, attributes: Attributes = "",
                    truncation: Truncation = 1.0, alias: Alias = None, download: Download = False) -> Response:
        model = served(alias)
        tags = parsed(model, attributes)
        with holder.lock:
            picture = model.drawer.grid(seed, n, columns, tags, truncation)
        return answer(picture, model, f"{stem(model)}-grid-seed{seed}-n{n}.png", download)

    @app.get("/api/vary.png", dependencies=checks, response_class=Response,
             responses={200: {"content": {"image/png": {}}}},
             summary="One avatar in every value of a group (a multi group's 'none' first), one row")
    def vary(group: Annotated[str, Query(max_length=100, description="an attribute group, e.g. hairstyle")],
             seed: Seed = 0, attributes: Attributes = "", truncation: Truncation = 1.0, alias: Alias = None,
             download: Download = False) -> Response:
        model = served(alias)
        tags = parsed(model, attributes)
        avatars = model.avatars
        if not avatars.conditional:
            raise BadInput("group", "this model takes no attribute labels (unconditional); nothing to vary")
        if group not in avatars.groups:
            raise BadInput("group", f"unknown attribute group {group!r}; groups: {', '.join(avatars.groups)}")
        named = [tag for tag in tags if tag in avatars.groups[group].get("tags", [])]
        if named:
            raise BadInput("attributes", f"names {named[0]!r}, a {group} value; the strip draws every {group}")
        with holder.lock:
            picture = model.drawer.vary(seed, group, tags, truncation)
        return answer(picture, model, f"{stem(model)}-seed{seed}-every-{group}.png", download)

    @app.get("/api/interpolate.png", dependencies=checks, response_class=Response,
             responses={200: {"content": {"image/png": {}}}},
             summary="The latent path from seed to seed_b in `steps` tiles, one row")
    def interpolate_png(inputs: Interpolation, download: Download = False) -> Response:
        model = served(inputs["alias"])
        tags = parsed(model, inputs["attributes"])
        with holder.lock:
            picture = model.drawer.interpolation_png(inputs["seed"], inputs["seed_b"], inputs["steps"], tags,
                                                     inputs["truncation"])
        return answer(picture, model, f"{stem(model)}-{inputs['seed']}-to-{inputs['seed_b']}.png", download)

    @app.get("/api/interpolate.gif", dependencies=checks, response_class=Response,
             responses={200: {"content": {"image/gif": {}}}},
             summary="The same path as a looping animated GIF, one frame per step")
    def interpolate_gif(inputs: Interpolation, frame_ms: Annotated[int, Query(ge=20, le=5000)] = 120,
                        download: Download = False) -> Response:
        model = served(inputs["alias"])
        tags = parsed(model, inputs["attributes"])
        with holder.lock:
            picture = model.drawer.interpolation_gif(inputs["seed"], inputs["seed_b"], inputs["steps"], tags,
                                                     inputs["truncation"], frame_ms)
        return answer(picture, model, f"{stem(model)}-{inputs['seed']}-to-{inputs['seed_b']}.gif", download)

    return app
