"""Progress on a terminal's stderr (a spinner over plan steps, byte bars over backup members); nothing
when stderr is not a terminal, so cron mail and journald only get the log lines."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reconciler.cli.common import CliState
    from reconciler.engine.context import StackContext


def run_with_progress(state: CliState, ctx: StackContext, verb: str, allow_empty: bool = False) -> Any:
    from functools import partial

    from reconciler.engine import apply as engine

    run: Any = partial(engine.apply, allow_empty=allow_empty) if verb == "apply" else engine.down
    if not state.out.stderr_tty:
        return run(ctx)
    from rich.markup import escape

    with state.out.err.status(f"{verb}: observing the stack...") as spinner:

        def progress(index: int, total: int, action: Any) -> None:
            if index > 1:
                state.out.err.print(f"  [green]✓[/] {escape(previous[0])}")
            previous[0] = action.describe()
            spinner.update(f"[{index}/{total}] {escape(action.describe())}")

        previous = [""]
        result = run(ctx, progress)
        if result.executed:
            state.out.err.print(f"  [green]✓[/] {escape(previous[0])}")
    return result


def byte_progress(state: CliState, title: str) -> Any:
    """A rich progress display of bytes per member on a terminal; nothing otherwise."""
    import contextlib

    if not state.out.stderr_tty:
        return contextlib.nullcontext(None)
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    return Progress(
        TextColumn(f"{title} [bold]{{task.description}}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=state.out.err,
        transient=True,
    )
