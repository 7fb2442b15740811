"""tests/api/wizard_api.py as a real server process (the examples' `ExampleServer`)."""

from __future__ import annotations

from pathlib import Path

from e2e import ExampleServer

HERE = Path(__file__).resolve().parent


class WizardApiServer(ExampleServer):
    """`python tests/api/wizard_api.py --port P ARGS...` in a subprocess on a free port."""

    def __init__(self, *args: str) -> None:
        super().__init__("wizard", *args)
        self.script = HERE / "wizard_api.py"
