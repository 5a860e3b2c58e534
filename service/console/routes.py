"""Mounting the console on the API app: static files, every page router, `/` -> `/ui/`."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from service.console import admin_manage, admin_review, auth_views, researcher_views
from service.console.render import HERE


def install(app: FastAPI) -> None:
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="console-static")
    for router in (auth_views.api, auth_views.router, admin_review.router, admin_manage.router, researcher_views.router,
                   auth_views.fallback):
        app.include_router(router)

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/ui/", status_code=307)
