"""Ray's exceptions as one plain line: an actor whose constructor raised is named by that exception."""

from __future__ import annotations

import re

from ray.exceptions import RayActorError

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")  # terminal colours: Ray paints the task's name in its errors
_RAISED = re.compile(r"[A-Za-z_][\w.]*(: |$)")  # "ModuleNotFoundError: No module named 'dipcore'"


def first_line(exc: BaseException) -> str:
    """The exception as one plain line; an actor whose constructor raised is named by that exception (type and
    message), which Ray's ``ActorDiedError`` carries only inside its text, after the creation task's traceback."""
    if isinstance(exc, RayActorError) and exc.actor_init_failed:
        raised = creation_error(str(exc))
        if raised:
            return f"{raised} (raised while the worker started)"
    text = _ANSI.sub("", str(exc)).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


def creation_error(text: str) -> str | None:
    """The first line of the exception at the end of a remote traceback (Ray's ``RayTaskError`` text): the first
    unindented line after the last ``File "…"`` frame."""
    lines = _ANSI.sub("", text).splitlines()
    frames = [i for i, line in enumerate(lines) if line.lstrip().startswith('File "')]
    for line in lines[frames[-1] + 1 :] if frames else ():
        if line[:1].strip() and _RAISED.match(line):
            return line.strip()
    return None
