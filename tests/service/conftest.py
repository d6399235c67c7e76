"""Fixtures of the service tests: a generated world with one active build, and apps over it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from tests.support.service_world import World, planted_world


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """Shared, read-only world: one active build (tests must not change it)."""
    return planted_world(tmp_path_factory.mktemp("world"))


@pytest.fixture()
def fresh_world(tmp_path: Path) -> World:
    """A world of this test alone (for tests that add or activate builds)."""
    return planted_world(tmp_path)


@pytest.fixture()
def client(world: World) -> Iterator[TestClient]:
    """A started app (lifespan run) over the shared world."""
    with TestClient(create_app(world.settings())) as test_client:
        yield test_client
