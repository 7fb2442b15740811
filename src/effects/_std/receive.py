"""`Receive(topic)`: wait for a message sent to the run on `topic`."""

from __future__ import annotations

from typing import Any

from .control import Yield


class Receive(Yield):
    """Wait for a message on `topic`; the message is the result.

    A `Yield` tagged with its topic: under `start`/`astart`/`AsyncComputation` the run suspends
    with the prompt `{"receive": topic}` (plus `"timeout": seconds` when given) and whoever
    drives it resumes it with the message (validated against `input`, as any `Yield` answer).
    In a durable run, `DurableRunner.send(run_id, topic, value)` delivers messages: those sent
    before the run waits are kept, in order, and each is delivered exactly once; with
    `timeout`, a `TimeoutError` (the library's) is raised at the `Receive` when no message came
    within `timeout` seconds of the first time the run waited there (a durable timer).
    """

    topic: str = ""
    timeout: float | None = None

    def __init__(self, topic: str, input: Any = None, timeout: float | None = None) -> None:
        self._value = (
            {"receive": topic} if timeout is None else {"receive": topic, "timeout": timeout}
        )
        self._input = input
        self._topic = topic
        self._timeout = timeout


Receive.__module__ = "effects"


def receive_topic(prompt: Any) -> str | None:
    """The topic a suspended run waits on, from its prompt (None if it is not a `Receive`)."""
    if type(prompt) is dict and type(prompt.get("receive")) is str and set(prompt) <= _KEYS:
        topic: str = prompt["receive"]
        return topic
    return None


def receive_timeout(prompt: Any) -> float | None:
    """The timeout of the `Receive` a suspended run waits at, from its prompt."""
    if receive_topic(prompt) is None:
        return None
    timeout = prompt.get("timeout")
    return float(timeout) if isinstance(timeout, int | float) else None


_KEYS = frozenset({"receive", "timeout"})
