"""The daemon's upkeep: what time drives after a pass has converged the stack, one object per task.

Each task owns its schedule and its backoff (``base.Retry``) instead of sharing the loop's attributes,
and they share one small protocol (``base.UpkeepTask``): ``run(upkeep)`` does the task's work for this
pass, ``wakeup(now)`` says when the loop should wake for it. The loop (``daemon/loop.py``) runs them in
order after a pass that ended in sync, and sleeps until the earliest wake-up:

1. ``services.ServicesRunning``: a service that died after the apply looked → converge again at once;
2. ``pressure.RamPressure``: RAM headroom (and the fallback to disk mode);
3. ``backup.ScheduledBackup``: a backup that has come due (with its own retry backoff);
3b. ``redissnap.RedisSnapshots``: Redis alone between sets (``backup.continuous.redis_every``);
4. ``verify.VerifyNewest``: verify the newest unverified set, then run retention;
5. ``offsite.OffsiteSync``: Drive uploads (after a backup, after a failure, once per cadence);
6. ``publish.BackupMetrics``: the backup metrics (age, size, next due).

A task that changed the stack (the fallback switch) ends the upkeep of this pass (``Upkeep.stop``):
the next pass observes the stack afresh.
"""
