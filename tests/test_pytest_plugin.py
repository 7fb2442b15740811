"""The pytest plugin `effects` (src/effects/durable/pytest_plugin.py), as a user's test suite
sees it: each test here runs pytest on a small project of its own (`pytester`, in a
subprocess) with warnings as errors, anyio's plugin and `--strict-markers`, as this repository
does."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

CONFIG = """
[pytest]
addopts = --strict-markers -p no:cacheprovider
filterwarnings = error
"""


def run_inner(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """Run pytest on the project `pytester` made, with the plugin loaded the way an installed
    package loads it (its entry point), or by name while this checkout is not installed."""
    pytester.makeini(CONFIG)
    installed = any(
        ep.value == "effects.durable.pytest_plugin"
        for ep in importlib.metadata.entry_points(group="pytest11")
    )
    plugin = () if installed else ("-p", "effects.durable.pytest_plugin")
    return pytester.runpytest_subprocess(*plugin, *args, timeout=120)


def test_entry_point_is_declared() -> None:
    """pyproject.toml registers the plugin for pytest (group `pytest11`)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    points = project["project"]["entry-points"]["pytest11"]
    assert points == {"effects": "effects.durable.pytest_plugin"}


def test_durable_runner_and_scripted(pytester: pytest.Pytester) -> None:
    """`durable_runner` runs a workflow on a SQLite file with the marker's handlers (and says
    what to do on trio); a script left unfinished fails a passing test, and does not pile onto
    a failing one. (`live_client` runs in `test_testing_guide_runs`, on asyncio and trio.)"""
    pytester.makepyfile(
        test_workflow="""
        import pytest

        from effects import Effect, Yield, computation, handler, run
        from effects.durable import RunStatus

        class Charge(Effect[str]):
            amount: int

        @computation(name="shop.checkout")
        def checkout(amount: int):
            ok = yield Yield("pay?", input=bool)
            if not ok:
                return "kept"
            return (yield Charge(amount))

        payments = handler({Charge: lambda e: f"ch-{e.amount}"}, external=True)

        @pytest.fixture
        def anyio_backend():
            return "asyncio"  # the durable runner needs asyncio

        @pytest.mark.anyio
        @pytest.mark.effects_handlers(payments)
        async def test_checkout(durable_runner, effects_db_url):
            assert effects_db_url.startswith("sqlite+aiosqlite:///")
            run_ = await durable_runner.start(checkout(12))
            assert run_.status == RunStatus.SUSPENDED
            done = await durable_runner.resume(run_.id, True)
            assert done.outcome.value == "ch-12"

        @pytest.mark.anyio
        async def test_two_runners_share_the_file(durable_runner_factory):
            async with durable_runner_factory(owner="a") as first:
                run_ = await first.start(checkout(1))
            async with durable_runner_factory(owner="b", handlers=payments) as second:
                done = await second.resume(run_.id, True)
            assert done.outcome.value == "ch-1"

        def test_script_performed(scripted):
            script = scripted((Charge(5), "ch-5"))
            assert run(Charge(5), script) == "ch-5"

        def test_script_left_unfinished(scripted):
            script = scripted((Charge(5), "ch-5"), (Charge(6), "ch-6"))
            assert run(Charge(5), script) == "ch-5"

        def test_failing_test_keeps_its_own_error(scripted):
            scripted((Charge(7), "ch-7"))
            assert 1 == 2
        """
    )
    pytester.makepyfile(
        test_trio="""
        import pytest

        @pytest.fixture
        def anyio_backend():
            return "trio"

        @pytest.mark.anyio
        async def test_runner_on_trio(durable_runner):
            pass
        """
    )
    result = run_inner(pytester, "-v")
    result.assert_outcomes(passed=4, failed=1, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*test_runner_on_trio ERROR*",
            "*test_script_left_unfinished ERROR*",
            "*test_failing_test_keeps_its_own_error FAILED*",
        ]
    )
    # Where anyio also runs tests on trio, `durable_runner` names the fixture to define.
    result.stdout.fnmatch_lines(["*durable_runner needs the asyncio backend, not 'trio'*"])
    assert result.stdout.str().count("ScriptMismatch") >= 1
    # The failing test reports its assertion only, not also the unperformed script.
    assert "ERROR at teardown of test_failing_test_keeps_its_own_error" not in result.stdout.str()


def test_plugin_is_inert_for_other_tests(pytester: pytest.Pytester) -> None:
    """Loaded, the plugin changes nothing for tests that do not use it: their own fixtures
    with the same names win, anyio and warnings-as-errors behave as before."""
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture
        def scripted():
            return "the project's own fixture"
        """
    )
    pytester.makepyfile(
        test_other="""
        import warnings

        import anyio
        import pytest

        def test_own_fixture_wins(scripted):
            assert scripted == "the project's own fixture"

        @pytest.mark.anyio
        async def test_anyio_still_works():
            await anyio.sleep(0)

        def test_warnings_are_still_errors():
            with pytest.raises(UserWarning):
                warnings.warn("boom", UserWarning)
        """
    )
    result = run_inner(pytester)
    result.assert_outcomes(passed=4)  # the anyio test on asyncio and trio


def test_testing_guide_runs(pytester: pytest.Pytester) -> None:
    """The files of docs/guides/testing.md (`# shop.py`, `# test_*.py` blocks) pass as a
    project of their own."""
    guide = (ROOT / "docs" / "guides" / "testing.md").read_text()
    files = re.findall(r"^```python\n# (\w+)\.py\n(.*?)^```", guide, re.S | re.M)
    assert [name for name, _ in files] == [
        "shop",
        "test_checkout_logic",
        "test_checkout_durable",
        "test_checkout_pages",
    ]
    for name, source in files:
        pytester.makepyfile(**{name: source})
    pytester.syspathinsert()
    result = run_inner(pytester, "-v")
    # test_checkout_pages runs on asyncio and trio (anyio's default backends).
    result.assert_outcomes(passed=6)
