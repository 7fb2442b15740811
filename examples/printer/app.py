"""A model function that prints as it works, on a page that also works without JavaScript.

    python examples/printer/app.py                # http://127.0.0.1:8000
    python examples/printer/app.py --url postgresql+asyncpg://app@db/printer

`fit_line` is ordinary numeric code that reports with `yield Print(...)` where a script would
call `print(...)`: the lines appear on the run's page as they are printed, with a progress bar.
Without JavaScript the form posts normally and the page refreshes itself while the run works.
"""

from __future__ import annotations

import random
from collections.abc import Generator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from starlette.applications import Starlette

from bridges.live import progress_app, serve_options
from effects import Clock, Print, Progress, Random, computation

HERE = Path(__file__).resolve().parent
PAUSE = 0.1  # seconds per epoch: the real work is too quick to watch


class Fit(BaseModel):
    """The start form."""

    epochs: int = Field(default=40, ge=1, le=500, description="Passes of gradient descent")
    learning_rate: float = Field(default=0.5, gt=0, le=0.75, description="Above 0.79 it diverges")


@computation(name="printer.fit_line", version=1)
def fit_line(epochs: int = 40, learning_rate: float = 0.5) -> Generator[Any, Any, str]:
    """Fit y = a*x + b to noisy points by gradient descent, printing the loss as it goes."""
    # The one random draw is an effect, so a replayed run sees the same data.
    seed = yield Random.randint(0, 2**31 - 1)
    rng = random.Random(seed)
    xs = [i / 49 for i in range(50)]
    ys = [3 * x + 1 + rng.gauss(0, 0.1) for x in xs]
    yield Print(f"fitting {len(xs)} points: {epochs} epochs, learning rate {learning_rate}")
    a = b = 0.0
    for epoch in range(1, epochs + 1):
        errors = [a * x + b - y for x, y in zip(xs, ys, strict=True)]
        loss = sum(e * e for e in errors) / len(xs)
        a -= learning_rate * 2 * sum(e * x for e, x in zip(errors, xs, strict=True)) / len(xs)
        b -= learning_rate * 2 * sum(errors) / len(xs)
        yield Print(f"epoch {epoch:3d}  loss {loss:.5f}  a={a:.3f}  b={b:.3f}")
        yield Progress(epoch, epochs)
        yield Clock.sleep(PAUSE)
    return f"y = {a:.2f}x + {b:.2f}"


def build(url: str, secret: str, *, owner: str | None = None, lease: float = 30.0) -> Starlette:
    """The app: `/` starts a fit, `/runs/{id}` shows it; runs are private to their session and
    live in the database at `url`; `owner` names this process for run leases."""
    return progress_app(
        fit_line,
        secret=secret,
        url=url,
        handlers=[Random(), Clock()],
        shared=False,
        start_input=Fit,
        title="Printer",
        owner=owner,
        lease=lease,
    )


def main() -> None:
    opts = serve_options("printer", "A model function that prints as it works.", here=HERE)
    app = build(opts.url, opts.secret(), owner=opts.owner, lease=opts.lease)
    opts.serve(app, "Printer")


if __name__ == "__main__":
    main()
