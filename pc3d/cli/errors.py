"""The one user-error path of every pc3d command.

A command's `main(argv)` is `run_cli(_main, argv)`: a mistake in what the user gave (a config, an override,
a file, an option) becomes one line on stderr, `error: <input>: <what was wrong>`, and exit code 2, never a
traceback. Bugs still show a traceback; `PC3D_DEBUG=1` shows it for user errors too.

User errors are `UserError` raised by the CLIs themselves, and the library's own validation errors:
`ConfigError`, `CheckpointError`, `ValueError` / `TypeError` from argument checks, and `OSError` for files
(missing, a directory, unreadable, not UTF-8).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, Sequence

EXIT_USER_ERROR = 2


class UserError(ValueError):
    """Something the user gave is wrong. `str()` is the whole message: `<input>: <what was wrong>`."""


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run a command's `main(argv)`; report a user error as one `error:` line and return 2."""
    try:
        return main(argv) or 0
    except (UserError, OSError, ValueError, TypeError) as err:
        if os.environ.get("PC3D_DEBUG"):
            raise
        print(f"error: {describe(err)}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR


def describe(err: BaseException) -> str:
    """The message of a user error: multi-line summaries (a checkpoint mismatch) keep their indented lines."""
    if isinstance(err, UnicodeDecodeError):
        return f"not a UTF-8 text file ({err.reason} at byte {err.start})"
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror.lower()}"
    return str(err).strip() or type(err).__name__


def input_file(path, what: str) -> Path:
    """`path` as a Path that exists and is a regular file; else a `UserError` naming it and saying why."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a directory; expected a {what} file")
    if not path.exists():
        raise UserError(f"{path}: {what} file not found")
    if not path.is_file():
        raise UserError(f"{path}: not a regular file; expected a {what} file")
    return path


def positive(value, name: str, allow_zero: bool = False):
    """`value` when it is a number > 0 (>= 0 with `allow_zero`); else a `UserError` naming the option."""
    ok = value >= 0 if allow_zero else value > 0
    if isinstance(value, bool) or not ok:
        raise UserError(f"{name}: must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return value


def user_exit(message: str) -> SystemExit:
    """A `SystemExit` for a user error inside helpers that stop the command directly: prints the one `error:`
    line now and exits with code 2 (`str()` of it is still the message, for callers that inspect it)."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    exit_ = SystemExit(message)
    exit_.code = EXIT_USER_ERROR
    return exit_
