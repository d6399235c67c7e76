"""Every dependency of the routes, as `Annotated` aliases. Tests override the `get_*` functions.

They are `async def` although none awaits anything: FastAPI runs a plain `def` dependency in its
thread pool, and three such hops per /localize request cost more than the rest of its routing.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.catalog import Catalog
from service.core.config import ServiceSettings
from service.core.state import AppState
from service.errors import NotReady
from service.metrics import Metrics
from service.pipeline import LocalizationService


async def get_state(request: Request) -> AppState:
    """The app's state object (allocated by `create_app`, filled by the lifespan)."""
    state: AppState = request.app.state.cvm
    return state


StateDep = Annotated[AppState, Depends(get_state)]


async def get_settings(state: StateDep) -> ServiceSettings:
    return state.settings


async def get_metrics(state: StateDep) -> Metrics:
    return state.metrics


async def get_localization(state: StateDep) -> LocalizationService:
    """The localisation pipeline; NotReady (503) before the lifespan loaded it."""
    if state.service is None:
        raise NotReady("the model is not loaded yet")
    return state.service


async def get_catalog(state: StateDep) -> Catalog:
    """The catalogue; NotReady (503) before the lifespan connected it."""
    if state.catalog is None:
        raise NotReady("the catalogue is not connected yet")
    return state.catalog


SettingsDep = Annotated[ServiceSettings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
LocalizationDep = Annotated[LocalizationService, Depends(get_localization)]
CatalogDep = Annotated[Catalog, Depends(get_catalog)]
