"""Shared fixtures. Stack tests use the project's own real Kafka broker and redis-server,
brought up (idempotently) by pipeline.devtools.stack, exactly as `orderstream stack up` does."""
from __future__ import annotations

import uuid

import pytest

from pipeline.devtools import stack
from pipeline.config import load_settings


@pytest.fixture(scope="session")
def settings():
    return load_settings()


@pytest.fixture(scope="session")
def redis_server(settings):
    stack.redis_up(settings)
    return settings.redis


@pytest.fixture()
def redis_url(redis_server):
    """A real Redis; every test gets its own key prefix via `redis_prefix`."""
    return redis_server


@pytest.fixture()
def redis_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def kafka(settings):
    stack.kafka_up(settings)
    return settings.bootstrap


@pytest.fixture()
def namespace() -> str:
    """A fresh topic namespace so pipelines in different tests never see each other's messages."""
    return f"t{uuid.uuid4().hex[:8]}."


def pytest_collection_modifyitems(items):
    """The unit tests first (minutes, no broker), then the stack tests; each keeps its file order."""
    items.sort(key=lambda item: 0 if item.path.parent.name == "unit" else 1)
