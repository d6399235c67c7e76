"""Fixtures of the service tests: a generated world with one active build, and apps over it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from tests.service.world import World, make_world, panorama_bytes, photo_bytes

PANO_TILE = 5  # tile index whose vector is the panorama query's descriptor in the first build
PHOTO_TILE = 10  # same for the photo query


def _planted_world(root: Path) -> World:
    world = make_world(root)
    planted = {
        PANO_TILE: world.descriptor(panorama_bytes(), "panorama"),
        PHOTO_TILE: world.descriptor(photo_bytes(), "photo"),
    }
    world.add_build(planted)
    return world


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """Shared, read-only world: one active build (tests must not change it)."""
    return _planted_world(tmp_path_factory.mktemp("world"))


@pytest.fixture()
def fresh_world(tmp_path: Path) -> World:
    """A world of this test alone (for tests that add or activate builds)."""
    return _planted_world(tmp_path)


@pytest.fixture()
def client(world: World) -> Iterator[TestClient]:
    """A started app (lifespan run) over the shared world."""
    with TestClient(create_app(world.settings())) as test_client:
        yield test_client
