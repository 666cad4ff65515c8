"""Text rendering of plans and status for people (JSON output bypasses this module)."""

from __future__ import annotations

from typing import Any

from reconciler.plan.planner import Plan
from reconciler.spec.units import format_bytes

_MARKER_STYLE = {"+": "green", "~": "yellow", "-": "red"}


def plan_text(the_plan: Plan, stack: str, mode: str, runtime: str) -> list[str]:
    """Rich markup lines: header, numbered steps with markers, warnings, blockers, summary."""
    lines = [f"[bold]Stack {stack}[/] (runtime {runtime}, mode {mode})"]
    for note in the_plan.notes:
        lines.append(f"[cyan]note:[/] {_escape(note)}")
    for warning in the_plan.warnings:
        lines.append(f"[yellow]warning:[/] {_escape(warning)}")
    if the_plan.blockers:
        for blocker in the_plan.blockers:
            lines.append(f"[red]✗[/] {_escape(blocker)}")
    elif the_plan.actions:
        lines.append("")
        width = len(str(len(the_plan.actions)))
        for index, action in enumerate(the_plan.actions, start=1):
            style = _MARKER_STYLE[action.marker]
            lines.append(f"  {index:>{width}}. [{style}]{action.marker}[/] {_escape(action.describe())}")
            for letter, step in zip("abcdefghijklmnop", getattr(action, "steps", list)(), strict=False):
                lines.append(f"  {'':>{width}}  {letter}. {_escape(step)}")
        lines.append("")
    for problem in the_plan.unhealable:
        lines.append(f"[red]✗[/] {_escape(problem)}")
    style = "red" if the_plan.blockers or the_plan.unhealable else ("green" if the_plan.in_sync else "bold")
    lines.append(f"[{style}]{the_plan.summary()}[/]")
    return lines


def status_text(document: dict[str, Any]) -> list[str]:
    lines = [
        f"[bold]Stack {document['stack']}[/] (runtime {document['runtime']}, mode {document['mode']}): "
        + ("[green]in sync[/]" if document["in_sync"] else "[yellow]out of sync[/] (run `reconciler plan`)")
    ]
    host = document.get("forThisHost") or {}
    if host and not host.get("matches", True):
        lines[0] = (
            f"[bold]Stack {document['stack']}[/] (runtime {document['runtime']}, mode {document['mode']}): "
            f"[yellow]not for this host[/] ({_escape(str(host.get('reason')))}); nothing is done here"
        )
    for name, why in (host.get("skippedServices") or {}).items():
        lines.append(f"  {name:<9} not for this host ({_escape(str(why))})")
    for name, svc in document["services"].items():
        state = (
            f"[green]running[/] (pid {svc['pid']}, port {svc['port']})"
            if svc["running"]
            else "[red]stopped[/]"
        )
        if svc.get("died"):
            state += " [red](process died)[/]"
        lines.append(f"  {name:<9} {state}")
        location = svc.get("data_dir") or svc.get("expected_data_dir")
        fs = svc.get("filesystem") or {}
        fs_text = fs.get("fstype", "?")
        if fs.get("size_bytes"):
            fs_text += f", {format_bytes(fs.get('used_bytes') or 0)} used of {format_bytes(fs['size_bytes'])}"
        lines.append(f"            data {_escape(str(location))} on {fs_text}")
        if svc.get("size_bytes") is not None:
            label = "memory used" if name == "redis" else "database size"
            lines.append(f"            {label} {format_bytes(svc['size_bytes'])}")
    host = document["host"]
    lines.append(
        f"  host      {format_bytes(host['mem_available'])} available of {format_bytes(host['mem_total'])} RAM"
    )
    for condition in document.get("conditions", []):
        good = (condition["status"] == "True") != (condition["type"] in ("Stalled", "Reconciling"))
        mark = "[green]✓[/]" if good else "[red]✗[/]"
        if condition["type"] == "Reconciling":
            mark = "[yellow]…[/]" if condition["status"] == "True" else "·"
        since = "observed now" if condition.get("observed") else f"since {condition['lastTransitionTime']}"
        lines.append(
            f"  {mark} {condition['type']}={condition['status']} {condition['reason']}: "
            f"{_escape(str(condition['message']))} ({since})"
        )
    backup = document.get("lastBackup")
    if backup:
        lines.append(
            f"  last backup {backup['set']} ({format_bytes(backup['size'])}, {backup['seconds']:.1f} s)"
        )
    restore = document.get("lastRestore")
    if restore:
        if restore.get("set"):
            lines.append(
                f"  last restore {restore['set']} from {restore['store']} at {restore['finished']} "
                f"({restore['seconds']:.1f} s)"
            )
        else:
            lines.append(f"  [red]last restore FAILED at {restore['finished']}: no set could be restored[/]")
        for rejected in restore.get("rejected", []):
            lines.append(
                f"    rejected {rejected['set']} ({rejected['store']}): {_escape(rejected['reason'])}"
            )
    if document.get("nextScheduledBackup"):
        lines.append(f"  next scheduled backup {document['nextScheduledBackup']}")
    wal_offsite = document.get("walOffsite")
    if wal_offsite and wal_offsite.get("state") == "behind":
        lines.append(
            f"  continuous WAL behind since {wal_offsite['since']} ({wal_offsite.get('code')}): "
            f"{_escape(str(wal_offsite.get('error')))}; the recovery point grows until Drive takes the "
            f"{wal_offsite.get('waiting')} waiting segment(s)"
        )
    continuous = document.get("continuousWal")
    if continuous and continuous.get("problem"):
        lines.append(f"  [red]continuous WAL: {_escape(str(continuous['problem']))}[/]")
    daemon = document.get("daemon")
    if daemon:
        if daemon.get("running"):
            lines.append(
                f"  daemon pid {daemon['pid']} since {daemon['started']}: {daemon['passes']} passes, "
                f"{daemon['errors']} errors, last pass {daemon['lastPass']}"
            )
        else:
            lines.append(f"  daemon not running (last pass {daemon.get('lastPass')})")
    override = document.get("modeOverride")
    if override:
        lines.append(
            f"  [yellow]mode override: {override['mode']} since {override['since']} ({_escape(str(override['reason']))}); "
            "edit state.yaml to try again[/]"
        )
    if document.get("lastAppliedRevision"):
        lines.append(f"  last applied revision {document['lastAppliedRevision']}")
    return lines


def _escape(text: str) -> str:
    return text.replace("[", "\\[")
