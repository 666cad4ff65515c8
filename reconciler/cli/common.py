"""What every verb of the command line shares: the per-invocation state, the error guard, the
``--output`` option and the ways to get a stack's context.

Design decisions:
- Every ``ReconcilerError`` becomes one clear line on stderr and the exit code of its class;
  a traceback means a bug, and is only shown with ``-v`` (``guard``).
- Heavy imports (pydantic models, database drivers, rich) happen inside the functions, so that
  ``reconciler --help`` and a no-op ``plan`` stay fast.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from reconciler.cli import exit_codes

if TYPE_CHECKING:
    from reconciler.cli.output import Output
    from reconciler.engine.context import StackContext
    from reconciler.errors import SpecInvalid
    from reconciler.spec.model import StateSpec

F = TypeVar("F", bound=Callable[..., Any])

FORMAT = click.option(
    "-o",
    "--output",
    "output_format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Output format on stdout.",
)


class CliState:
    """The group's options, handed to every verb as ``click``'s context object."""

    def __init__(self, state_file: str, color: bool, verbose: bool) -> None:
        from reconciler.cli.output import Output

        self.state_file = state_file
        self.out: Output = Output(color=color, verbose=verbose)
        self.out.setup_logging()


def load(state: CliState) -> StateSpec:
    from reconciler.engine.context import load_spec

    return load_spec(state.state_file)


def context(state: CliState) -> StackContext:
    from reconciler.engine.context import StackContext

    return StackContext.build(load(state), state.state_file)


def guard(func: F) -> F:
    """Map errors to exit codes and clear messages."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from reconciler.errors import InvalidInput, ReconcilerError, SpecInvalid

        state: CliState = click.get_current_context().obj
        try:
            return func(*args, **kwargs)
        except SpecInvalid as exc:
            for problem in exc.problems:
                sys.stderr.write(f"{problem}\n")
            sys.stderr.write(f"{exc}; nothing was changed.\n")
            sys.exit(exit_codes.INVALID_INPUT)
        except InvalidInput as exc:
            state.out.error(str(exc))
            sys.exit(exit_codes.INVALID_INPUT)
        except ReconcilerError as exc:
            if state.out.verbose:
                import traceback

                traceback.print_exc()
            state.out.error(str(exc))
            sys.exit(exit_codes.ERROR)
        except Exception as exc:  # a bug: say so plainly, keep the traceback for -v
            if state.out.verbose:
                import traceback

                traceback.print_exc()
            state.out.error(
                f"internal error: {type(exc).__name__}: {exc}. The command stopped at that point; "
                "run it again with -v for the traceback, and please report it"
            )
            sys.exit(exit_codes.ERROR)

    wrapper.__name__ = func.__name__
    wrapper.__doc__ = func.__doc__
    return wrapper  # type: ignore[return-value]


def note_uncommitted(state: CliState) -> None:
    """GitOps: the daemon follows the commit; a human's plan/apply uses the file. Say when they differ."""
    from reconciler.engine.revision import differs_from_commit

    head = differs_from_commit(state.state_file)
    if head:
        state.out.err.print(
            f"[yellow]note:[/] {state.state_file} has edits that are not committed (HEAD is {head}): this "
            "command uses the file as it is; the daemon follows the commit until you commit them",
            soft_wrap=True,
        )


def context_or_last_valid(state: CliState) -> tuple[StackContext, SpecInvalid | None]:
    """The stack's context; with an invalid state.yaml, the one of the spec last adopted, and the errors
    (the commands that show the stack must still show it while the file is broken)."""
    from reconciler.engine.context import StackContext, last_valid_spec
    from reconciler.errors import SpecInvalid

    try:
        return context(state), None
    except SpecInvalid as exc:
        spec = last_valid_spec(state.state_file)
        if spec is None:
            raise
        for problem in exc.problems:
            sys.stderr.write(f"{problem}\n")
        state.out.err.print(
            f"[yellow]state.yaml is invalid ({len(exc.problems)} problem(s) above); showing the stack under the "
            "spec last adopted[/]",
            soft_wrap=True,
        )
        return StackContext.build(spec, state.state_file), exc
