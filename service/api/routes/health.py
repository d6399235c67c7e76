"""GET /healthz (the process answers) and GET /readyz (model, index and database are usable)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.api.deps import StateDep
from service.core.state import AppState
from service.errors import ServiceError
from service.schemas import HealthOut, ReadyOut

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthOut, summary="Liveness")
async def healthz() -> HealthOut:
    return HealthOut(status="ok")


async def readiness(state: AppState) -> ReadyOut:
    """Check each dependency and collect the reasons it is not ready."""
    reasons: list[str] = []
    if state.localizer is None:
        reasons.append("model not loaded")
    snapshot = state.store.current if state.store is not None else None
    if snapshot is None:
        why = state.store.last_error if state.store is not None else None
        reasons.append(f"index not loaded: {why or 'startup not finished'}")
    if state.catalog is None:
        reasons.append("database not connected")
    else:
        try:
            await state.catalog.run(state.catalog.ping)
        except ServiceError as exc:
            reasons.append(str(exc))
    note = state.store.fallback_note if state.store is not None else None
    return ReadyOut(
        ready=not reasons,
        reasons=reasons,
        warnings=[note] if note else [],
        build_id=snapshot.build_id if snapshot else None,
        ntotal=snapshot.ntotal if snapshot else None,
        weights_sha256=state.localizer.weights_sha256 if state.localizer else None,
    )


@router.get(
    "/readyz",
    response_model=ReadyOut,
    responses={
        200: {"description": "ready: model, index and database are usable"},
        503: {"model": ReadyOut, "description": "not ready; `reasons` says why"},
    },
    summary="Readiness",
)
async def readyz(state: StateDep) -> JSONResponse:
    out = await readiness(state)
    return JSONResponse(out.model_dump(mode="json"), status_code=200 if out.ready else 503)
