"""One next step, two renderings (rgt.nextstep): the command a human types, the tool call an
agent makes; an argument rgt does not know is a placeholder on the CLI and left out of a call."""

from __future__ import annotations

from rgt.errors import CheckFailed
from rgt.gate import Missing
from rgt.nextstep import Step


def test_a_step_is_a_command_on_the_cli_and_a_call_through_mcp() -> None:
    copy = Step.of("copy", instance_id="42", remote_root="/workspace/results", local_dir=None)
    assert copy.cli() == "rgt pull 42 /workspace/results LOCAL_DIR"
    assert copy.call() == 'copy(instance_id="42", remote_root="/workspace/results")'
    wait = Step.of("poll", instance_id="42", wait=True)
    assert wait.cli() == "rgt poll 42 --until done"
    assert wait.call() == 'poll(instance_id="42", wait_seconds=600)'
    discard = Step.of("discard", instance_id="42", reason="host-lost")
    assert discard.cli() == "rgt discard 42 --reason host-lost"
    assert discard.call() == 'discard(instance_id="42", reason="host-lost")'
    # A path with quotes or braces stays one argument, quoted as JSON.
    odd = Step.of("verify", local_dir='/tmp/a "b" {next}')
    assert odd.call() == 'verify(local_dir="/tmp/a \\"b\\" {next}")'


def test_a_refusal_and_an_error_render_their_step_for_each_reader() -> None:
    missing = Missing(
        "no-verification", "no verification: run `{next}`", Step.of("verify", local_dir="/r")
    )
    assert missing.message == "no verification: run `rgt verify /r`"
    assert missing.for_tool() == 'no verification: run `verify(local_dir="/r")`'
    error = CheckFailed("not finished: `{next}`", step=Step.of("poll", instance_id="7"))
    assert error.message == "not finished: `rgt poll 7`"
    assert error.for_tool == 'not finished: `poll(instance_id="7")`'
    assert CheckFailed("plain {next}").for_tool == "plain {next}"
