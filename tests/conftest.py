from __future__ import annotations

import pytest

# tests/ is on sys.path (pytest's default "prepend" import mode puts the rootdir of this
# conftest there), so the fixture modules import as the package `fixtures`.
pytest_plugins = ["fixtures.postgres", "fixtures.browser", "fixtures.nginx", "pytester"]


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


def pytest_configure(config: pytest.Config) -> None:
    """Load this checkout's pytest plugin (docs/guides/testing.md) when the installed package
    did not already (its entry point is read from the installed metadata, which may predate
    the plugin): the docs' test files use its marker."""
    import effects.durable.pytest_plugin as plugin

    if not config.pluginmanager.is_registered(plugin):
        config.pluginmanager.register(plugin, "effects")
