"""How each plan action is carried out.

Design decision: every step is idempotent on its own (``initdb`` only into an empty directory, roles
and databases created only when missing, start/stop tolerate the target state). The engine can
therefore re-run a step after a crash without knowing whether it completed; the journal of the
mode-switch work builds on that property.
"""

from __future__ import annotations

import logging
import os

from reconciler.databases import postgres as pg
from reconciler.databases.engine import engine_for
from reconciler.engine.context import StackContext
from reconciler.engine.secrets import service_password
from reconciler.plan.actions import (
    Action,
    EnsureDatabase,
    FallBackToDisk,
    InitService,
    PrepareRamRoot,
    ProtectBackups,
    PruneBackups,
    ResizeRamRoot,
    RestartService,
    RestoreFromBackup,
    ResumeOperation,
    StartService,
    StopService,
    SwitchMode,
    TakeBackup,
)
from reconciler.spec.model import MariadbSpec, PostgresSpec

log = logging.getLogger(__name__)


def execute(action: Action, ctx: StackContext) -> None:
    runtime = ctx.runtime
    match action:
        case PrepareRamRoot(path=path, mount=mount, size_option=size):
            runtime.prepare_ram_root(path, mount, size)
        case ResizeRamRoot(path=path, size_option=size):
            runtime.resize_ram_root(path, size)
        case InitService(service_name=name, data_dir=data_dir):
            runtime.init_service(name, data_dir)
        case RestartService(service_name=name, data_dir=data_dir, port=port):
            runtime.stop_service(name, data_dir)
            runtime.start_service(name, data_dir, port)
        case StartService(service_name=name, data_dir=data_dir, port=port):
            runtime.start_service(name, data_dir, port)
        case StopService(service_name=name, data_dir=data_dir):
            runtime.stop_service(name, data_dir)
        case EnsureDatabase(service_name=name, database=database, owner=owner):
            spec = ctx.spec.services.configured()[name]
            assert isinstance(spec, PostgresSpec | MariadbSpec)
            password = None
            if spec.password_env and spec.password_env not in os.environ:
                log.warning(
                    "services.%s.password_env names %s, which is not set: role %s keeps the password it "
                    "has (none when new); an application logging in with a password may fail",
                    name,
                    spec.password_env,
                    owner,
                )
            else:
                password = service_password(ctx, name)
            engine = engine_for(name)
            if engine is not None:
                engine.ensure(runtime.endpoint(name, spec.port), database, owner, password)
            else:
                pg.ensure_role_and_database(runtime.endpoint(name, spec.port), owner, database, password)
        case SwitchMode():
            from reconciler.engine.switch import start_switch

            start_switch(ctx, action)
        case ResumeOperation(operation_kind=kind):
            from reconciler.engine import restore_op, switch

            (restore_op.resume if kind in restore_op.KINDS else switch.resume)(ctx)
        case RestoreFromBackup():
            from reconciler.engine.backups import restore_empty_services

            restore_empty_services(ctx, action)
        case ProtectBackups(set_names=names):
            from reconciler.engine.backups import protect

            protect(ctx, names)
        case PruneBackups(set_names=names):
            from reconciler.engine.backups import checked_prune_decision, delete_sets

            # the planner vouched from manifests alone: members are checksummed before anything goes
            keep = set(checked_prune_decision(ctx).delete)
            delete_sets(ctx, [name for name in names if name in keep])
        case TakeBackup(trigger=trigger):
            from reconciler.engine.backups import backup_owed, take_backup_held

            # idempotent like every step: a set taken since the plan (a switch's post-switch set) counts
            if backup_owed(ctx):
                take_backup_held(ctx, trigger)  # apply holds the stack lock
        case FallBackToDisk(reason=reason):
            from reconciler.engine.context import fall_back_to_disk

            fall_back_to_disk(ctx, reason)
        case _:
            raise NotImplementedError(f"no step for {action.kind}")
