"""WebSocket commands are bounded and validated (issue #8): a frame that is not a valid command
gets an `error` envelope, the connection stays open, and nothing reaches the run."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hostile import Guarded, receive, run_state, websocket
from live_client import SECRET, LiveServer, Visitor, form_key
from live_flows import signup

from bridges.live import wizard_app
from bridges.live._messages import MAX_DEPTH, MAX_MESSAGE, BadMessage, parse_command, too_deep

Serve = Callable[[Any], LiveServer]


def command(**fields: Any) -> dict[str, Any]:
    # The key names a step the run has left (its revision moved on): never a real answer.
    return {"type": "event", "ref": "r1", "event": "answer", "key": "answer:0", **fields}


def bad_frames(csrf: str) -> list[tuple[str | bytes, str]]:
    """(frame, expected error code): the frames of the issue and their relatives."""
    deep = '{"type":"event","csrf":"' + csrf + '","params":' + "[" * 20_000 + "]" * 20_000 + "}"
    return [
        (json.dumps(command(csrf=csrf, params=["name", "Ada"])), "invalid"),
        (json.dumps(command(csrf=csrf, params="name=Ada")), "invalid"),
        (json.dumps(command(csrf=csrf, params=7)), "invalid"),
        (json.dumps(command(csrf=csrf, params={"name": [1, 2]})), "invalid"),
        (json.dumps(command(csrf=csrf, params={"name": {"a": "b"}})), "invalid"),
        (json.dumps(command(csrf=12345)), "invalid"),
        (json.dumps(command(csrf=None)), "invalid"),
        (json.dumps(command(csrf=csrf, event=["answer"])), "invalid"),
        (json.dumps(command(csrf=csrf, key={"k": 1})), "invalid"),
        (json.dumps(command(csrf=csrf, ref=7)), "invalid"),
        (json.dumps(command(csrf=csrf, type="something")), "invalid"),
        (json.dumps({**command(csrf=csrf), "extra": [[[[[[[[[[1]]]]]]]]]]}), "too_deep"),
        (deep, "too_deep"),
        ("[" * 60_000, "too_deep"),
        ('"' + "x" * (MAX_MESSAGE + 1) + '"', "too_large"),
        ("not json at all", "invalid"),
        ('{"type": "event", "csrf": "', "invalid"),
        ("[]", "invalid"),
        ("null", "invalid"),
        ("1e999999", "invalid"),
        ('{"type":"event","csrf":"\\ud800"}', "invalid"),  # a lone surrogate
        (b"\xff\xfe not utf-8", "invalid"),
        (json.dumps(command(csrf=csrf)).encode(), "ok"),
        (json.dumps(command(csrf="wrong")), "csrf"),
        (json.dumps(command()), "invalid"),  # no csrf at all
    ]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the websockets client
async def test_bad_frames_get_an_error_envelope_and_change_nothing(
    serve: Serve, db_url: str
) -> None:
    """Each frame of the issue (params as a list, a string, a number; csrf as a number; deep
    nesting) and more is answered with an error envelope on a connection that stays open; the
    run's row and log are untouched, and a valid command still goes through afterwards."""
    app = Guarded(wizard_app(signup, secret=SECRET, url=db_url, title="Signup"))
    server = serve(app)
    async with Visitor(server.url) as ada:
        path = await ada.start()
        page = await ada.get(path)
        run_id = path.rsplit("/", 1)[1]
        before = run_state(db_url, run_id)
        async with websocket(server, ada, path) as ws:
            await receive(ws, "snapshot")
            for frame, code in bad_frames(ada.csrf):
                await ws.send(frame)
                if code == "ok":  # valid, but for a step long gone: a no-op
                    reply = await receive(ws, "reply")
                    assert reply["ref"] == "r1"
                    continue
                error = await receive(ws, "error")
                assert error["code"] == code, (frame[:80], error)
                assert error["msg"]
                assert error["ref"] in (None, "r1")
                json.dumps(error)  # plain JSON, whatever the frame held
            assert run_state(db_url, run_id) == before
            good = command(
                csrf=ada.csrf, key=form_key(page, "answer"), params={"name": "Ada", "age": "36"}
            )
            await ws.send(json.dumps(good))
            reply = await receive(ws, "reply")
            assert (reply["ok"], reply["ref"]) == (True, "r1")
    assert app.errors == []


def test_parse_command_bounds() -> None:
    """Limits hold exactly at their edges; depth is measured outside strings only."""
    ok = {"type": "event", "csrf": "t"}
    assert parse_command(json.dumps(ok)).fields() == {}
    assert parse_command(json.dumps({**ok, "params": {"a": "1", "b": ["2", "3"]}})).fields() == {
        "a": ["1"],
        "b": ["2", "3"],
    }
    padded = json.dumps({**ok, "pad": "x" * MAX_MESSAGE})[: MAX_MESSAGE - 2] + '"}'
    assert len(padded) == MAX_MESSAGE
    parse_command(padded)
    with pytest.raises(BadMessage) as large:
        parse_command(padded + " ")
    assert large.value.code == "too_large"
    nested = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    parse_command(
        json.dumps({**ok, "extra": json.loads("[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1))})
    )
    assert not too_deep(nested)
    assert too_deep("[" + nested + "]")
    assert too_deep("[" * (MAX_DEPTH + 1))  # unbalanced, but deep all the same
    assert not too_deep("[}" * 1000 + "][" * 1000)  # unbalanced and shallow: left to the parser
    assert not too_deep('{"a": "[[[[[[[[[[[[\\"[[[[["}')
    assert not too_deep('"unterminated [[[[[[[[[[[[[[[[')
    assert not too_deep("[]" * 30_000)
    with pytest.raises(BadMessage) as deep:
        parse_command(json.dumps({**ok, "extra": json.loads(nested)}))
    assert deep.value.code == "too_deep"
