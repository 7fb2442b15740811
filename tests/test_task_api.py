"""The task API: metadata, handles, a file-like writer, rich output blocks (aprot, lofigui)."""

from __future__ import annotations

import io
import json
import logging
import shutil
import threading
from collections.abc import Generator
from typing import Any

import pytest

from effects import Call, Output, Print, Progress, Yield, arun, run, start, task, with_handler
from effects.durable import EffectLogger
from effects.tasks import (
    CurrentTask,
    TaskHandle,
    TaskSnapshot,
    TaskTree,
    TaskWriter,
    open_task,
)


def tree_of(comp: Any) -> TaskSnapshot:
    snapshots: list[TaskSnapshot] = []
    run(comp, TaskTree(snapshots.append))
    return snapshots[-1]


def test_metadata_is_set_merged_replaced_and_serialized() -> None:
    def work() -> Generator[Any, Any, None]:
        me: TaskHandle = yield CurrentTask()
        yield me.update(rows=10, source="crm")
        yield me.update(rows=12)
        child = yield from me.subtask("Save")
        yield child.set_meta({"batch": [1, 2]})
        yield child.set_meta({"done": True})
        yield child.close()

    snapshot = tree_of(task("Import", work()))
    imp, save = snapshot.nodes[1], snapshot.nodes[2]
    assert imp.meta == {"rows": 12, "source": "crm"}
    assert save.meta == {"done": True}
    assert save.parent == imp.id
    assert save.status == "completed"
    again = TaskSnapshot.from_dict(json.loads(json.dumps(snapshot.to_dict())))
    assert again == snapshot


def test_metadata_must_be_json_data() -> None:
    def work() -> Generator[Any, Any, str]:
        me: TaskHandle = yield CurrentTask()
        try:
            yield me.update(when=object())
        except ValueError as err:
            return str(err)
        return "accepted"

    assert run(task("T", work()), TaskTree()).startswith("task metadata must be JSON data")


def test_old_stored_trees_without_meta_or_kinds_still_load() -> None:
    old = {
        "version": 3,
        "nodes": [
            {
                "id": 0,
                "parent": None,
                "title": "",
                "status": "running",
                "current": 0,
                "total": None,
                "lines": [{"seq": 1, "text": "hi"}],
                "partial": "",
                "dropped": 0,
                "error": None,
            },
        ],
    }
    snapshot = TaskSnapshot.from_dict(old)
    assert snapshot.root.meta == {}
    assert snapshot.root.lines[0].kind == "text"


def test_a_handle_opens_closes_and_fails_tasks_and_progress_follows_the_innermost() -> None:
    def work() -> Generator[Any, Any, None]:
        upload = yield from open_task("Upload")
        yield Progress(1, 4)
        check = yield from upload.subtask("Check")
        yield Progress(1, 2)  # into Check, the innermost
        yield check.fail("checksum mismatch")
        yield Progress(4)  # back into Upload
        yield upload.close()

    snapshot = tree_of(work())
    upload, check = snapshot.nodes[1], snapshot.nodes[2]
    assert (upload.status, upload.current, upload.total) == ("completed", 4, 4)
    assert (check.status, check.error, check.current) == ("failed", "checksum mismatch", 1)


def test_writer_takes_print_copyfileobj_bytes_and_logging() -> None:
    log = logging.getLogger("tests.task_writer")
    log.propagate = False

    def work() -> Generator[Any, Any, None]:
        me: TaskHandle = yield CurrentTask()
        w: TaskWriter = yield from me.writer()
        print("hello", 42, file=w)
        # bytes split inside a multi-byte character are decoded across writes
        shutil.copyfileobj(io.BytesIO("naïve café\nlast".encode()), w, length=3)
        handler = w.log_handler(fmt="%(levelname)s %(message)s")
        log.addHandler(handler)
        try:
            log.warning("disk at %d%%", 91)
        finally:
            log.removeHandler(handler)
        yield Print(" line")

    node = tree_of(task("Copy", work())).nodes[1]
    assert [line.text for line in node.lines] == [
        "hello 42",
        "naïve café",
        "lastWARNING disk at 91%",
        " line",  # buffered (no newline), flushed when the task ended
    ]
    assert node.partial == ""


def test_writer_counts_bytes_as_progress_and_closes_with_its_task() -> None:
    writers: list[TaskWriter] = []

    def work() -> Generator[Any, Any, None]:
        me: TaskHandle = yield CurrentTask()
        w = yield from me.writer(total_bytes=10)
        writers.append(w)
        w.write(b"abcd\n")
        w.write("é\n")  # 3 bytes in UTF-8
        yield Progress.step(0)

    node = tree_of(task("Download", work())).nodes[1]
    assert node.total == 10
    assert node.status == "completed"
    assert [line.text for line in node.lines] == ["abcd", "é"]
    assert writers[0].closed
    with pytest.raises(ValueError, match="writer is closed"):
        writers[0].write("late\n")


@pytest.mark.anyio
async def test_writer_written_from_a_call_in_a_worker_thread() -> None:
    threads: list[int] = []

    def blocking_copy(w: TaskWriter) -> int:
        threads.append(threading.get_ident())
        for i in range(3):
            print("chunk", i, file=w)
        return 3

    def work() -> Generator[Any, Any, int]:
        me: TaskHandle = yield CurrentTask()
        w = yield from me.writer()
        return (yield Call(blocking_copy, w))

    snapshots: list[TaskSnapshot] = []
    assert await arun(task("Copy", work()), TaskTree(snapshots.append)) == 3
    assert threads[0] != threading.get_ident()  # the Call ran in a worker thread
    lines = [line.text for line in snapshots[-1].nodes[1].lines]
    assert lines == ["chunk 0", "chunk 1", "chunk 2"]


def test_writer_from_an_unknown_thread_is_a_clear_error() -> None:
    errors: list[BaseException] = []

    def work() -> Generator[Any, Any, None]:
        me: TaskHandle = yield CurrentTask()
        w = yield from me.writer()

        def other() -> None:
            try:
                w.write("x\n")
            except BaseException as err:
                errors.append(err)

        t = threading.Thread(target=other)
        t.start()
        t.join()

    tree_of(task("T", work()))
    assert isinstance(errors[0], RuntimeError)
    assert "thread the run does not know" in str(errors[0])


def test_output_blocks_markdown_html_and_tables() -> None:
    def work() -> Generator[Any, Any, None]:
        yield Print("partial ", end="")
        yield Output.markdown("# Report\n\n*2* rows")
        yield Output.html("<b>bold</b>", safe=True)
        yield Output.html("<script>alert(1)</script>")  # not marked safe: text
        yield Output.table([{"name": "Ann", "n": 1}, {"name": "Bob", "extra": None}])
        yield Output.table([(1, 2)], columns=["a", "b"])

    lines = tree_of(work()).root.lines
    assert [(line.kind, line.text) for line in lines[:4]] == [
        ("text", "partial "),
        ("markdown", "# Report\n\n*2* rows"),
        ("html", "<b>bold</b>"),
        ("text", "<script>alert(1)</script>"),
    ]
    assert json.loads(lines[4].text) == {
        "columns": ["name", "n", "extra"],
        "rows": [["Ann", "1", ""], ["Bob", "", ""]],
    }
    assert lines[5].kind == "table"
    assert json.loads(lines[5].text) == {"columns": ["a", "b"], "rows": [["1", "2"]]}


def test_unknown_output_kind_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown output kind"):
        run(Output("x", "pdf"), TaskTree())  # type: ignore[arg-type]


def test_replay_rebuilds_metadata_handles_and_blocks() -> None:
    """TaskTree is replayable: a cold resume rebuilds metadata, handle-closed tasks and
    output blocks from the log, with the same ids and line numbers."""

    def two_steps() -> Generator[Any, Any, str]:
        upload = yield from open_task("Upload")
        yield upload.update(rows=3)
        yield Output.table([[1]], columns=["a"])
        yield upload.close()
        answer = yield Yield("go on?")
        yield Output.markdown(f"**{answer}**")
        return str(answer)

    first: list[TaskSnapshot] = []
    outcome = start(with_handler(two_steps(), EffectLogger()), TaskTree(first.append))
    log = outcome.data[EffectLogger]
    resumed: list[TaskSnapshot] = []
    cold = start(with_handler(two_steps(), EffectLogger(log)), TaskTree(resumed.append))
    assert resumed == []  # rebuilt quietly
    cold.resume("yes")
    final = resumed[-1]
    assert final.nodes[1].meta == {"rows": 3}
    assert final.nodes[1].status == "completed"
    assert [line.kind for line in final.nodes[1].lines] == ["table"]
    assert [line.kind for line in final.root.lines] == ["markdown"]
    assert final.nodes[1] == first[-1].nodes[1]  # same node, same line numbers
