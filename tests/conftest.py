from __future__ import annotations

import pytest

# tests/ is on sys.path (pytest's default "prepend" import mode puts the rootdir of this
# conftest there), so the fixture modules import as the package `fixtures`.
pytest_plugins = ["fixtures.postgres", "fixtures.browser", "fixtures.nginx"]


@pytest.fixture(
    params=[
        pytest.param("asyncio", id="asyncio"),
        pytest.param("trio", id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run every ``@pytest.mark.anyio`` test on asyncio and on trio."""
    backend: str = request.param
    return backend
