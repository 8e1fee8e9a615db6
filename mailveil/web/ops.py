"""Operations endpoints: liveness, readiness and Prometheus metrics (no token: bind the
HTTP listener to a private interface, or filter these paths at the proxy)."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client import REGISTRY as PROCESS_REGISTRY
from sqlalchemy import text
from sqlalchemy.orm import Session

from mailveil.metrics import QueueCollector


def ops_router(sessions: Callable[[], Session]) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    queues = CollectorRegistry()
    queues.register(QueueCollector(sessions))

    @router.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz")
    def readyz(response: Response) -> dict[str, str]:
        try:
            with sessions() as s:
                s.execute(text("SELECT 1"))
        except Exception as exc:
            response.status_code = 503
            return {"status": "database unavailable", "error": type(exc).__name__}
        return {"status": "ready"}

    @router.get("/metrics")
    def metrics() -> Response:
        body = generate_latest(PROCESS_REGISTRY) + generate_latest(queues)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return router
