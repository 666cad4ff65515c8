"""The ``reconciler`` command line: parse, call the engine, render, exit with a meaningful code.

Design decisions:
- Nothing but parsing, rendering and exit codes lives here; every decision is in the layers below.
- Heavy imports (pydantic models, database drivers, rich) happen inside the commands, so that
  ``reconciler --help`` and a no-op ``plan`` stay fast.
- Every ``ReconcilerError`` becomes one clear line on stderr and the exit code of its class;
  a traceback means a bug, and is only shown with ``-v``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, TypeVar

import click

from reconciler.cli import exit_codes

# pydantic scans every installed distribution for plugins on import (~25-30 ms); we use none.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

if TYPE_CHECKING:
    from reconciler.cli.output import Output
    from reconciler.engine.context import StackContext
    from reconciler.errors import SpecInvalid
    from reconciler.spec.model import StateSpec

F = TypeVar("F", bound=Callable[..., Any])

_FORMAT = click.option(
    "-o",
    "--output",
    "output_format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Output format on stdout.",
)


class _State:
    def __init__(self, state_file: str, color: bool, verbose: bool) -> None:
        from reconciler.cli.output import Output

        self.state_file = state_file
        self.out: Output = Output(color=color, verbose=verbose)
        self.out.setup_logging()


def _load(state: _State) -> StateSpec:
    from reconciler.engine.context import load_spec

    return load_spec(state.state_file)


def _context(state: _State) -> StackContext:
    from reconciler.engine.context import StackContext

    return StackContext.build(_load(state), state.state_file)


def _guard(func: F) -> F:
    """Map errors to exit codes and clear messages."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from reconciler.errors import InvalidInput, ReconcilerError, SpecInvalid

        state: _State = click.get_current_context().obj
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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-f",
    "--file",
    "state_file",
    default="state.yaml",
    envvar="RECONCILER_STATE",
    show_default=True,
    help="The desired-state file.",
)
@click.option("--no-color", is_flag=True, help="Plain output (also when NO_COLOR is set).")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging and tracebacks.")
@click.version_option(package_name="reconciler")
@click.pass_context
def cli(ctx: click.Context, state_file: str, no_color: bool, verbose: bool) -> None:
    """Keep a stack's PostgreSQL and Redis in RAM or disk mode, with safe backups."""
    ctx.obj = _State(state_file, not no_color, verbose)


@cli.command()
@_FORMAT
@click.pass_obj
@_guard
def validate(state: _State, output_format: str) -> None:
    """Check state.yaml; report every problem with its line and column."""
    spec = _load(state)
    if output_format == "json":
        state.out.json({"valid": True, "stack": spec.stack})
    else:
        state.out.out.print(f"{state.state_file} is valid (stack {spec.stack}, mode {spec.mode}).")


def _show_plan(state: _State, ctx: StackContext, output_format: str, allow_empty: bool = False) -> int:
    from reconciler.cli.render import plan_text
    from reconciler.engine.apply import compute_plan

    the_plan = compute_plan(ctx, allow_empty)
    spec = ctx.spec
    override = ctx.mode_override
    replay: list[str] = []
    if (
        spec.backup.continuous.enabled
    ):  # base + WAL a restore on boot replays (imported only then: plan's speed)
        from reconciler.engine.recovery import preview

        replay = preview(ctx, the_plan.actions)
    if output_format == "json":
        state.out.json(
            {
                "stack": spec.stack,
                "mode": spec.mode,
                "runtime": spec.runtime,
                "modeOverride": override,
                **the_plan.to_dict(),
                **({"replay": replay} if replay else {}),
            }
        )
    else:
        if override:
            state.out.err.print(
                f"[yellow]note:[/] {spec.mode} mode instead of state.yaml's: the daemon fell back at "
                f"{override['since']} ({override['reason']}); edit state.yaml to try again"
            )
        for line in plan_text(the_plan, spec.stack, spec.mode, spec.runtime):
            state.out.out.print(line)
        for line in replay:
            state.out.out.print(f"  {line}", soft_wrap=True)
    if the_plan.blockers:
        return exit_codes.ERROR
    return exit_codes.OK if the_plan.in_sync else exit_codes.CHANGES_PENDING


@cli.command()
@_FORMAT
@click.pass_obj
@_guard
def plan(state: _State, output_format: str) -> None:
    """Show what `apply` would change. Exit 0: in sync, 2: changes pending, 1: blocked or error."""
    ctx = _context(state)
    _note_uncommitted(state)
    sys.exit(_show_plan(state, ctx, output_format))


def _note_uncommitted(state: _State) -> None:
    """GitOps: the daemon follows the commit; a human's plan/apply uses the file. Say when they differ."""
    from reconciler.engine.revision import differs_from_commit

    head = differs_from_commit(state.state_file)
    if head:
        state.out.err.print(
            f"[yellow]note:[/] {state.state_file} has edits that are not committed (HEAD is {head}): this "
            "command uses the file as it is; the daemon follows the commit until you commit them",
            soft_wrap=True,
        )


@cli.command()
@click.option("--dry-run", is_flag=True, help="Only show the plan (same as `reconciler plan`).")
@click.option(
    "--allow-empty",
    is_flag=True,
    help="Start services empty although backup sets exist that cannot be restored (they are protected).",
)
@_FORMAT
@click.pass_obj
@_guard
def apply(state: _State, dry_run: bool, allow_empty: bool, output_format: str) -> None:
    """Converge the stack to state.yaml."""
    ctx = _context(state)
    _note_uncommitted(state)
    if dry_run:
        sys.exit(_show_plan(state, ctx, output_format, allow_empty))
    result = _run_with_progress(state, ctx, "apply", allow_empty)
    if output_format == "json":
        state.out.json(
            {
                "applied": [a.to_dict() for a in result.executed],
                "seconds": round(result.seconds, 3),
                "in_sync": True,
            }
        )
    elif result.executed:
        state.out.out.print(
            f"[green]Applied {len(result.executed)} step{'s' if len(result.executed) != 1 else ''} "
            f"in {result.seconds:.1f} s; stack {ctx.spec.stack} is in sync ({ctx.spec.mode} mode).[/]"
        )
    else:
        state.out.out.print(
            f"[green]No changes: stack {ctx.spec.stack} is in sync ({ctx.spec.mode} mode).[/]"
        )


def _run_with_progress(state: _State, ctx: StackContext, verb: str, allow_empty: bool = False) -> Any:
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


@cli.command()
@click.pass_obj
@_guard
def down(state: _State) -> None:
    """Stop the stack's services. Data stays where it is (on tmpfs: until reboot)."""
    ctx = _context(state)
    result = _run_with_progress(state, ctx, "down")
    for warning in result.plan.warnings:
        state.out.err.print(f"[yellow]warning:[/] {warning}")
    state.out.out.print(f"Stopped {len(result.executed)} service(s) of stack {ctx.spec.stack}.")


@cli.command()
@_FORMAT
@click.pass_obj
@_guard
def status(state: _State, output_format: str) -> None:
    """Show services, where their data lives, conditions and the last run."""
    from datetime import UTC, datetime

    from reconciler.cli.render import status_text
    from reconciler.engine import status as status_file
    from reconciler.plan.planner import plan as make_plan

    ctx, invalid = _context_or_last_valid(state)
    observed = ctx.observe()
    the_plan = make_plan(ctx.spec, observed, datetime.now(UTC))
    recorded = status_file.load(ctx.status_path)
    backup_records = _backup_records(ctx)
    services = {}
    for name, svc in observed.services.items():
        location = svc.location(ctx.spec.mode)
        current = svc.ram if svc.data_dir == svc.ram.path else (svc.disk if svc.data_dir else location)
        services[name] = {
            "running": svc.running,
            "pid": svc.pid,
            "port": svc.port,
            "died": svc.died,
            "data_dir": svc.data_dir,
            "expected_data_dir": location.path,
            "initialized": current.initialized,
            "filesystem": asdict(current.filesystem) if current.filesystem else None,
            "on_tmpfs": bool(current.filesystem and current.filesystem.is_tmpfs),
            "size_bytes": svc.size_bytes,
            "version": svc.version,
        }
    document = {
        "stack": ctx.spec.stack,
        "mode": ctx.spec.mode,
        "runtime": ctx.spec.runtime,
        "in_sync": the_plan.in_sync,
        "pending": [a.describe() for a in the_plan.actions],
        "blockers": list(the_plan.blockers),
        "services": services,
        "host": asdict(observed.host),
        "conditions": _with_spec_validity(
            status_file.live_conditions(recorded.get("conditions", []), ctx.spec, observed, the_plan), invalid
        ),
        "specErrors": [str(p) for p in invalid.problems] if invalid else [],
        "lastAppliedRevision": recorded.get("lastAppliedRevision"),
        "lastRun": recorded.get("lastRun"),
        "lastRestore": backup_records.get("last_restore"),
        "lastBackup": backup_records.get("last_success"),
        "nextScheduledBackup": recorded.get("nextScheduledBackup"),
        "daemon": _daemon_status(ctx, recorded.get("daemon")),
        "modeOverride": ctx.mode_override,
    }
    if output_format == "json":
        state.out.json(document)
    else:
        for line in status_text(document):
            state.out.out.print(line)


def _context_or_last_valid(state: _State) -> tuple[StackContext, SpecInvalid | None]:
    """The stack's context; with an invalid state.yaml, the one of the spec last adopted, and the errors
    (the commands that show the stack must still show it while the file is broken)."""
    from reconciler.engine.context import StackContext, last_valid_spec
    from reconciler.errors import SpecInvalid

    try:
        return _context(state), None
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


def _with_spec_validity(
    conditions: list[dict[str, Any]], invalid: SpecInvalid | None
) -> list[dict[str, Any]]:
    from reconciler.engine.status import set_condition

    if invalid is None:
        return conditions
    problems = "; ".join(str(p) for p in invalid.problems[:3])
    return set_condition(
        conditions,
        "SpecValid",
        False,
        "Invalid",
        f"state.yaml is invalid: {problems}; the last valid spec is shown",
    )


def _daemon_status(ctx: StackContext, recorded: dict[str, Any] | None) -> dict[str, Any] | None:
    """The daemon's own report, corrected by its lock: a daemon killed with -9 cannot say it stopped."""
    from reconciler.system import fs

    holder = fs.lock_holder(os.path.join(ctx.state_dir, "daemon.lock"))
    if recorded is None and holder is None:
        return None
    return {**(recorded or {}), "running": holder is not None, "pid": holder or (recorded or {}).get("pid")}


def _backup_records(ctx: StackContext) -> dict[str, Any]:
    from reconciler.engine import records

    return records.read(ctx).document


@cli.command()
@click.option("--check", is_flag=True, help="Exit 1 when the file differs from the model.")
@click.option("--docs", is_flag=True, help="Write the Markdown option reference instead of the schema.")
@click.argument("path", required=False)
@click.pass_obj
@_guard
def schema(state: _State, check: bool, docs: bool, path: str | None) -> None:
    """Export the JSON Schema of state.yaml (or, with --docs, docs/OPTIONS.md) from the model."""
    from reconciler.spec.schema import options_markdown, schema_text

    text = options_markdown() if docs else schema_text()
    path = path or ("docs/OPTIONS.md" if docs else "schemas/state.schema.json")
    if check:
        try:
            with open(path, encoding="utf-8") as handle:
                current = handle.read()
        except FileNotFoundError:
            current = ""
        if current != text:
            state.out.error(f"{path} is stale; run `reconciler schema {path}`")
            sys.exit(exit_codes.ERROR)
        return
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    state.out.out.print(f"wrote {path}")


@cli.command()
@click.option(
    "--out", "path", default=None, help="Identity file to create (default: backup.encryption.identity_file)."
)
@click.option(
    "--add-recipient",
    is_flag=True,
    help="Also add the new recipient to backup.encryption.recipients in state.yaml (comments and layout kept).",
)
@click.pass_obj
@_guard
def keygen(state: _State, path: str | None, add_recipient: bool) -> None:
    """Create an age identity (mode 0600). The recipient (public key) goes to stdout, messages to stderr."""
    from reconciler.backup import keys
    from reconciler.errors import InvalidInput

    spec = _load(state) if path is None or add_recipient else None
    if path is None:
        assert spec is not None
        if not spec.backup.encryption.identity_file:
            raise InvalidInput("give --out PATH or set backup.encryption.identity_file in state.yaml")
        path = spec.resolve(spec.backup.encryption.identity_file)
    if spec is not None and add_recipient and spec.backup.encryption.method == "none":
        raise InvalidInput(
            "backup.encryption is 'none' in state.yaml; set it to age before adding a recipient"
        )
    recipient = keys.generate(path)
    state.out.err.print(
        f"wrote {path} (mode 0600). Keep a copy somewhere safe: without it no backup can be restored.",
        soft_wrap=True,
    )
    print(recipient, flush=True)  # first: if editing state.yaml fails below, the recipient is not lost
    if add_recipient:
        _add_recipient(state.state_file, recipient)
        state.out.err.print(
            f"added its recipient (printed on stdout) to backup.encryption.recipients in {state.state_file}",
            soft_wrap=True,
        )
    else:
        state.out.err.print(
            "Its recipient (public key, printed on stdout) belongs in backup.encryption.recipients in "
            "state.yaml; `reconciler keygen --add-recipient` puts it there.",
            soft_wrap=True,
        )


def _add_recipient(state_file: str, recipient: str) -> None:
    """Rewrite state.yaml (atomically, same mode, through a symlink) with the recipient added."""
    from reconciler.engine.context import read_state_bytes
    from reconciler.spec.edit import add_recipient
    from reconciler.spec.loader import parse_state_bytes
    from reconciler.system import fs

    target = os.path.realpath(state_file)
    text = add_recipient(read_state_bytes(target).decode("utf-8-sig"), recipient)
    parse_state_bytes(text.encode(), source=state_file, base_dir=os.path.dirname(target))
    fs.atomic_write_bytes(target, text.encode(), os.stat(target).st_mode & 0o7777)


def _byte_progress(state: _State, title: str) -> Any:
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


@cli.command()
@click.option(
    "--trigger", default="manual", show_default=True, help="Why this set is taken (part of its name)."
)
@_FORMAT
@click.pass_obj
@_guard
def backup(state: _State, trigger: str, output_format: str) -> None:
    """Take one consistent, encrypted backup set of every service now."""
    from reconciler.engine import backups
    from reconciler.spec.units import format_bytes

    ctx = _context(state)
    with _byte_progress(state, "backup") as bar:
        tasks: dict[str, Any] = {}

        def progress(member: str, done: int) -> None:
            if bar is not None:
                if member not in tasks:
                    tasks[member] = bar.add_task(member, total=None)
                bar.update(tasks[member], completed=done)

        document = backups.take_backup(ctx, trigger, progress)
    size = sum(int(m["size"]) for m in document["members"])
    uploaded = _upload_after_backup(state, ctx)
    if output_format == "json":
        state.out.json(
            {
                "set": document["set"],
                "size": size,
                "seconds": document["seconds"],
                "members": document["members"],
                "uploaded": uploaded,
            }
        )
    else:
        state.out.out.print(
            f"backup set {document['set']}: {format_bytes(size)} in {document['seconds']:.1f} s"
        )


def _upload_after_backup(state: _State, ctx: StackContext) -> list[str] | None:
    """Push to Drive when enabled; a failed upload leaves the set local and is retried by the next sync."""
    from reconciler.engine import offsite
    from reconciler.errors import ReconcilerError

    if offsite.drive_store(ctx) is None:
        return None
    try:
        return offsite.sync(ctx).uploaded
    except ReconcilerError as exc:
        state.out.error(f"the set is stored locally, but the upload to Google Drive failed: {exc}")
        return []


@cli.command()
@click.pass_obj
@_guard
def sync(state: _State) -> None:
    """Upload complete local sets missing on Google Drive, then apply Drive's retention."""
    from reconciler.engine import offsite

    ctx = _context(state)
    result = offsite.sync(ctx)
    state.out.out.print(
        f"uploaded {len(result.uploaded)} set(s) ({result.bytes_sent} bytes), pruned {len(result.pruned)} on Drive"
    )


@cli.command(name="backups")
@_FORMAT
@click.pass_obj
@_guard
def list_backups(state: _State, output_format: str) -> None:
    """List backup sets: name, age, size, store, complete (superseded: never restored on boot), verified."""
    from datetime import UTC, datetime

    from reconciler.engine import backups
    from reconciler.spec.units import format_bytes, format_duration

    ctx = _context(state)
    now = datetime.now(UTC)
    listing = [entry.to_dict(now) for entry in backups.list_sets(ctx, with_remote=True)]
    if output_format == "json":
        state.out.json({"stack": ctx.spec.stack, "sets": listing})
        return
    if not listing:
        state.out.out.print(f"no backup sets in {backups.local_store(ctx).describe()}")
        return
    from datetime import timedelta

    from rich.table import Table

    table = Table(box=None)
    for column in ("set", "age", "size", "stores", "complete", "verified"):
        table.add_column(column)
    for entry in listing:
        verified = entry["verified"]
        mark = (
            "-"
            if verified is None
            else ("yes" if verified.get("ok") else f"FAILED: {verified.get('reason')}")
        )
        table.add_row(
            entry["name"],
            format_duration(timedelta(seconds=max(entry["age_seconds"], 0))),
            format_bytes(entry["size"]),
            ",".join(entry["stores"]),
            ("yes, superseded" if entry["superseded"] else "yes") if entry["complete"] else "NO",
            mark,
        )
    state.out.out.print(table)


@cli.command()
@click.argument("set_name", required=False)
@click.option("--latest", is_flag=True, help="Restore the newest complete set.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (for scripts).")
@click.option("--no-safety-backup", is_flag=True, help="Skip the pre-restore backup of the current data.")
@click.option(
    "--legacy", "legacy_file", default=None, help="Restore a legacy Loomio *.sql.enc backup instead."
)
@click.option("--password-env", default=None, help="With --legacy: variable holding the legacy password.")
@click.option(
    "--to",
    "to_time",
    default=None,
    help="Point-in-time recovery of PostgreSQL (backup.continuous): e.g. '2026-11-22 14:03' (this host's "
    "local time unless an offset is given).",
)
@click.pass_obj
@_guard
def restore(
    state: _State,
    set_name: str | None,
    latest: bool,
    yes: bool,
    no_safety_backup: bool,
    legacy_file: str | None,
    password_env: str | None,
    to_time: str | None,
) -> None:
    """Restore a backup set into the running stack (replaces the current data)."""
    from reconciler.engine import backups
    from reconciler.errors import InvalidInput

    ctx = _context(state)
    if to_time:  # base + WAL replayed up to a time (engine/recovery.py)
        from reconciler.engine.recovery import parse_target, restore_to_time

        when = parse_target(to_time)
        if not yes and not click.confirm(f"Replace PostgreSQL's data with its state at {when}?", err=True):
            raise InvalidInput("restore cancelled; nothing was changed")
        state.out.out.print(f"restored PostgreSQL to {when}: {restore_to_time(ctx, when).describe()}")
        return
    if legacy_file:
        if not password_env:
            raise InvalidInput("--legacy needs --password-env VARIABLE (the legacy BACKUP_ENCRYPTION_KEY)")
        from reconciler.engine.legacy import restore_legacy

        if not yes and not click.confirm(
            f"Replace database {ctx.spec.services.postgres.database if ctx.spec.services.postgres else '?'} with {legacy_file}?",
            err=True,
        ):
            raise InvalidInput("restore cancelled; nothing was changed")
        tables = restore_legacy(ctx, legacy_file, password_env, safety_backup=not no_safety_backup)
        state.out.out.print(f"restored legacy backup {legacy_file}: {tables} tables in the database")
        return
    if not set_name and not latest:
        raise InvalidInput("name a set (see `reconciler backups`) or pass --latest")
    target = set_name or "the newest complete set"
    if not yes and not click.confirm(
        f"Replace the current data of stack {ctx.spec.stack} with {target}?", err=True
    ):
        raise InvalidInput("restore cancelled; nothing was changed")
    result = backups.restore(ctx, set_name, safety_backup=not no_safety_backup)
    safety = f"; the data before it is in {result.safety_backup}" if result.safety_backup else ""
    state.out.out.print(
        f"restored {result.set_name} ({result.tables} tables) in {result.seconds:.1f} s{safety}"
    )


@cli.command()
@click.argument("set_name", required=False)
@_FORMAT
@click.pass_obj
@_guard
def verify(state: _State, set_name: str | None, output_format: str) -> None:
    """Restore a set into scratch servers on tmpfs and check it against its manifest."""
    from reconciler.engine import backups

    ctx = _context(state)
    result = backups.verify(ctx, set_name)
    if output_format == "json":
        state.out.json(result)
    elif result["ok"]:
        state.out.out.print(
            f"{result['set']} verified: {result.get('tables', 0)} tables, {result.get('rows', 0)} rows, "
            f"{result.get('redis_keys', 0)} redis keys match the manifest ({result['seconds']:.1f} s)"
        )
    elif result.get("fault") == "host":
        state.out.error(f"{result['set']} could not be verified: {result['reason']}")
    else:
        state.out.error(f"{result['set']} FAILED verification: {result['reason']}")
    if not result["ok"]:
        sys.exit(exit_codes.ERROR)


@cli.command()
@click.option("--dry-run", is_flag=True, help="Only show which sets would be deleted.")
@click.pass_obj
@_guard
def prune(state: _State, dry_run: bool) -> None:
    """Delete backup sets that the retention policy no longer keeps."""
    from reconciler.engine import backups

    ctx = _context(state)
    _, decision = backups.prune_decision(ctx)
    if decision.held_back:
        state.out.out.print(f"nothing pruned: {decision.held_back}")
        return
    deleted = decision.delete if dry_run else backups.prune(ctx)
    verb = "would delete" if dry_run else "deleted"
    for name in deleted:
        state.out.out.print(f"- {verb} {name}")
    state.out.out.print(f"{len(deleted)} set(s) {verb}, {len(decision.keep)} kept.")


@cli.command()
@click.pass_obj
@_guard
def daemon(state: _State) -> None:
    """Keep the stack converged and its backups fresh until SIGTERM/SIGINT (then a final backup in RAM mode)."""
    from reconciler.daemon.loop import Daemon

    sys.exit(Daemon(state.state_file).run())


@cli.command()
@click.option(
    "-n", "--limit", type=int, default=50, show_default=True, help="Show the newest N events (0: all)."
)
@click.option("--warnings", is_flag=True, help="Only Warning events.")
@_FORMAT
@click.pass_obj
@_guard
def events(state: _State, limit: int, warnings: bool, output_format: str) -> None:
    """Show what the daemon noticed and did (the events log), oldest first."""
    from reconciler.engine import events as event_log

    ctx, _ = _context_or_last_valid(state)
    found = event_log.read(ctx.state_dir)
    if warnings:
        found = [e for e in found if e.get("type") == "Warning"]
    if limit:
        found = found[-limit:]
    if output_format == "json":
        state.out.json(found)
        return
    if not found:
        state.out.out.print(f"no events yet in {event_log.events_path(ctx.state_dir)}")
    for event in found:
        colour = "yellow" if event.get("type") == "Warning" else "green"
        message = str(event.get("message", "")).replace("[", "\\[")
        state.out.out.print(
            f"{event.get('time')} [{colour}]{event.get('type', '?'):<7}[/] {event.get('reason')}: {message}"
        )


@cli.group()
def gdrive() -> None:
    """Google Drive helpers."""


@gdrive.command()
@click.option(
    "--client-secrets", required=True, help="The OAuth client JSON (type: Desktop app) from Google Cloud."
)
@click.option(
    "--out", "out_path", default=None, help="Where to write the file (default: gdrive.credentials_file)."
)
@click.pass_obj
@_guard
def login(state: _State, client_secrets: str, out_path: str | None) -> None:
    """Create the authorized-user file for a personal Google account, without a browser on this machine."""
    from reconciler.errors import InvalidInput
    from reconciler.stores import gdrive_login

    if out_path is None:
        spec = _load(state)
        if not spec.backup.stores.gdrive.credentials_file:
            raise InvalidInput("give --out PATH or set backup.stores.gdrive.credentials_file in state.yaml")
        out_path = spec.resolve(spec.backup.stores.gdrive.credentials_file)
    session = gdrive_login.start(client_secrets)
    click.echo("1. Open this address in a browser on any device and allow access:\n", err=True)
    click.echo(session.url(), err=True)
    click.echo(
        "\n2. The browser then fails to load a page on 127.0.0.1. Copy that page's full address.", err=True
    )
    pasted = click.prompt("3. Paste it here", err=True)
    gdrive_login.finish(session, gdrive_login.code_from(pasted, session), out_path)
    state.out.out.print(f"wrote {out_path} (mode 0600); set backup.stores.gdrive.credentials_file to it")


def main() -> None:
    cli(prog_name="reconciler")


if __name__ == "__main__":
    main()
