"""The desired state: what a user writes in ``state.yaml``.

Design decisions:
- Every option carries a description and an example (borgmatic's rule). They feed the exported JSON
  Schema (``schemas/state.schema.json``), editor completion, and the option reference in the docs, so
  the model is the single source of truth for what an option means.
- Unknown keys are rejected (``extra="forbid"``): a typo such as ``tmpfs_sise`` must not silently fall
  back to a default on the machine that holds someone's only copy of their data.
- Secrets are never values here, only references (``password_env``, ``identity_file``). The loader
  rejects inline secrets before this model sees them (see ``loader.py``).
- Paths stay as written; ``StateSpec.resolve`` makes them absolute against the directory that holds
  state.yaml, so the same file works from any working directory. This module is pure: it never
  touches the filesystem.
"""

from __future__ import annotations

import posixpath
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from reconciler.spec.units import ByteSize, Duration, SizeOrShare, TmpfsSize


def is_loopback_url(url: str) -> bool:
    """An http(s) URL whose host is a loopback address (127.0.0.0/8, ::1) or ``localhost``."""
    import ipaddress
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        parts.port  # noqa: B018  (raises ValueError on a malformed port)
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or parts.username or parts.password:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


SERVICE_KINDS: tuple[str, ...] = ("postgres", "redis")
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"


def _field(default: Any = ..., *, description: str, example: Any, **kwargs: Any) -> Any:
    return Field(default, description=description, examples=[example], **kwargs)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, validate_default=True)


class PostgresSpec(_Strict):
    """A PostgreSQL server with one application database."""

    database: str = _field(
        description="Name of the application's database; created if missing.", example="loomio_production"
    )
    user: str = _field(description="Role that owns the database; created if missing.", example="loomio")
    password_env: Annotated[str, Field(pattern=ENV_NAME_PATTERN)] | None = _field(
        None,
        description="Name of the environment variable holding the role's password (never the password).",
        example="POSTGRES_PASSWORD",
    )
    password_file: str | None = _field(
        None,
        description="Path of a file (mode 0600, outside the repository) holding the role's password.",
        example="/etc/reconciler/postgres.password",
    )
    port: int = _field(5432, description="TCP port on 127.0.0.1.", example=5432, ge=1, le=65535)
    disk_dir: str = _field(
        description="Data directory used in disk mode (relative paths are relative to state.yaml).",
        example="./data/postgres",
    )
    dump_options: list[str] = _field(
        default_factory=list,
        description="Extra options appended to pg_dump when taking a backup.",
        example=["--no-owner", "--no-acl"],
    )
    container: str | None = _field(
        None,
        description="Container name (docker runtime only; default <stack>-postgres).",
        example="loomio-db",
    )
    image: str | None = _field(
        None,
        description="Image to create the container from when it does not exist (docker runtime only); "
        "an existing container keeps its own image.",
        example="postgres:15",
    )

    @model_validator(mode="after")
    def _one_password_source(self) -> PostgresSpec:
        if self.password_env and self.password_file:
            raise ValueError("set either password_env or password_file, not both")
        return self


class RedisSpec(_Strict):
    """A Redis server."""

    port: int = _field(6379, description="TCP port on 127.0.0.1.", example=6379, ge=1, le=65535)
    disk_dir: str = _field(
        description="Data directory used in disk mode (relative paths are relative to state.yaml).",
        example="./data/redis",
    )
    container: str | None = _field(
        None,
        description="Container name (docker runtime only; default <stack>-redis).",
        example="loomio-redis",
    )
    image: str | None = _field(
        None,
        description="Image to create the container from when it does not exist (docker runtime only).",
        example="redis:7",
    )


class ServicesSpec(_Strict):
    """The stack's stateful services. At least one must be configured."""

    postgres: PostgresSpec | None = _field(
        None,
        description="The PostgreSQL server.",
        example={"database": "loomio_production", "user": "loomio", "disk_dir": "./data/postgres"},
    )
    redis: RedisSpec | None = _field(
        None, description="The Redis server.", example={"disk_dir": "./data/redis"}
    )

    @model_validator(mode="after")
    def _at_least_one(self) -> ServicesSpec:
        if self.postgres is None and self.redis is None:
            raise ValueError("configure at least one service (postgres or redis)")
        return self

    def configured(self) -> dict[str, PostgresSpec | RedisSpec]:
        found: dict[str, PostgresSpec | RedisSpec] = {}
        if self.postgres is not None:
            found["postgres"] = self.postgres
        if self.redis is not None:
            found["redis"] = self.redis
        return found


class DrainSpec(_Strict):
    """Application containers stopped while data moves and started again afterwards."""

    containers: list[str] = _field(
        default_factory=list,
        description="Containers to stop before a mode switch or restore, in order; started in reverse.",
        example=["loomio-app", "loomio-worker"],
    )


class RamSpec(_Strict):
    """Where and how data lives in RAM mode."""

    path: str = _field(
        "/dev/shm/reconciler/{stack}",
        description="Directory on tmpfs that holds each service's RAM-mode data directory. "
        "{stack} is replaced by the stack's name.",
        example="/dev/shm/reconciler/{stack}",
    )
    mount: Literal["auto", "always", "never"] = _field(
        "auto",
        description="Mount a dedicated tmpfs at `path` with the `tmpfs_size` limit: `always`, `never` "
        "(use the tmpfs that `path` already lives on, such as /dev/shm), or `auto` (mount when running as root).",
        example="auto",
    )
    tmpfs_size: TmpfsSize = _field(
        SizeOrShare(percent=50),
        description="Size limit of the dedicated tmpfs: a size or a share of the host's RAM.",
        example="50%",
    )
    min_headroom: ByteSize = _field(
        1024**3,
        description="Host memory that must stay available in RAM mode; below it the reconciler warns "
        "or falls back to disk (see on_pressure) and refuses to enter RAM mode.",
        example="1GiB",
    )
    keep_disk_copy: bool = _field(
        True,
        description="After switching from disk to RAM mode, keep the disk copy as a stale safety copy "
        "(it costs no RAM). It is never used as data again; it is replaced by the next switch to disk.",
        example=True,
    )
    switch_backup: Literal["online", "drained"] = _field(
        "online",
        description="When a mode switch takes its pre-switch backup set: `online`, just before the apps are "
        "drained (write downtime ~1-2 s per GB; if the machine also loses power in the middle of the switch, "
        "the writes of those few seconds are not in that set), or `drained`, after draining (no such loss, "
        "but the downtime grows by the backup's duration, ~10 s per GB).",
        example="online",
    )
    on_pressure: Literal["warn", "fallback-to-disk"] = _field(
        "warn",
        description="What to do when available memory drops below min_headroom.",
        example="warn",
    )


class RetentionSpec(_Strict):
    """Which backup sets to keep (restic's semantics: a set is kept when any rule keeps it)."""

    keep_last: int = _field(24, description="Keep the newest N sets.", example=24, ge=0)
    keep_hourly: int = _field(
        0, description="Keep the newest set of each of the last N hours.", example=48, ge=0
    )
    keep_daily: int = _field(
        7, description="Keep the newest set of each of the last N days.", example=7, ge=0
    )
    keep_weekly: int = _field(
        4, description="Keep the newest set of each of the last N weeks.", example=4, ge=0
    )
    keep_monthly: int = _field(
        0, description="Keep the newest set of each of the last N months.", example=12, ge=0
    )


class EncryptionSpec(_Strict):
    """How backup files are encrypted. Write `encryption: none` to store backups unencrypted on purpose."""

    method: Literal["age", "none"] = _field(
        "age", description="`age` (X25519 recipients) or `none` (explicitly unencrypted).", example="age"
    )
    recipients: list[str] = _field(
        default_factory=list,
        description="age public keys (age1...) that backups are encrypted to; safe to commit.",
        example=["age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"],
    )
    identity_file: str | None = _field(
        None,
        description="Path of the age identity (secret key) file, mode 0600, outside the repository. "
        "Needed to restore and to authenticate backup manifests.",
        example="/etc/reconciler/backup.key",
    )

    @model_validator(mode="before")
    @classmethod
    def _none_shorthand(cls, data: Any) -> Any:
        if data == "none":
            return {"method": "none"}
        return data

    @field_validator("recipients")
    @classmethod
    def _recipients_are_public_keys(cls, value: list[str]) -> list[str]:
        for recipient in value:
            if not recipient.startswith("age1"):
                raise ValueError(f"{recipient[:12]!r}... is not an age public key (they start with 'age1')")
        return value


class LocalStoreSpec(_Strict):
    """Backup sets in a local directory."""

    path: str = _field(
        "./data/backups",
        description="Directory holding backup sets (relative paths are relative to state.yaml).",
        example="./data/backups",
    )


class GdriveStoreSpec(_Strict):
    """Off-site copies of backup sets on Google Drive."""

    enabled: bool = _field(False, description="Upload backup sets to Google Drive.", example=True)
    folder_id: str | None = _field(
        None, description="Id of the Drive folder that holds the backups.", example="1AbCdEfGhIjKlMnOp"
    )
    sub_path: str | None = _field(
        None,
        description="Folders below folder_id to keep the sets in, created if missing.",
        example="reconciler/loomio",
    )
    credentials_file: str | None = _field(
        None,
        description="Path of an OAuth authorized-user file (personal accounts) or a service-account key "
        "(Shared Drives), outside the repository.",
        example="/etc/reconciler/gdrive.json",
    )
    drive_id: str | None = _field(
        None, description="Id of the Shared Drive that holds folder_id, if it is on one.", example="0AbCdEf"
    )
    bandwidth_limit: ByteSize | None = _field(
        None, description="Upload at most this many bytes per second (unset: no limit).", example="2MiB"
    )
    chunk_size: ByteSize = _field(
        8 * 1024 * 1024,
        description="Resumable upload chunk size (a multiple of 256 KiB); a dropped connection resends at most one.",
        example="8MiB",
    )
    retention: RetentionSpec | None = _field(
        None,
        description="Retention on Drive (unset: the same as backup.retention).",
        example={"keep_daily": 30, "keep_monthly": 12},
    )
    api_url: str | None = _field(
        None,
        description="Root URL of the Drive API; only for tests against a local emulator, so only a loopback "
        "address (127.0.0.1, ::1, localhost) is accepted: the credentials and every backup go there.",
        example="http://127.0.0.1:8099/",
    )

    @field_validator("api_url")
    @classmethod
    def _loopback_only(cls, value: str | None) -> str | None:
        if value is not None and not is_loopback_url(value):
            raise ValueError(
                "api_url may only name this machine (http://127.0.0.1:PORT/, a Drive emulator for tests): "
                "the Drive refresh token and every backup would be sent there. Remove it to use Google Drive"
            )
        return value

    @model_validator(mode="after")
    def _complete_when_enabled(self) -> GdriveStoreSpec:
        if self.enabled and (not self.folder_id or not self.credentials_file):
            raise ValueError("an enabled gdrive store needs folder_id and credentials_file")
        if self.chunk_size % (256 * 1024):
            raise ValueError("chunk_size must be a multiple of 256KiB")
        return self


class StoresSpec(_Strict):
    """Where backup sets are kept."""

    local: LocalStoreSpec = _field(
        default_factory=LocalStoreSpec, description="The local store.", example={"path": "./data/backups"}
    )
    gdrive: GdriveStoreSpec = _field(
        default_factory=GdriveStoreSpec, description="The Google Drive store.", example={"enabled": False}
    )


class BackupSpec(_Strict):
    """Backups: how often, how long they are kept, how they are encrypted, where they go."""

    cadence: Duration = _field(3600, description="Take a backup set this often.", example="1h")
    stale_after: Duration = _field(
        7200, description="A newest backup older than this is reported as stale.", example="2h"
    )
    retention: RetentionSpec = _field(
        default_factory=RetentionSpec,
        description="Which sets to keep.",
        example={"keep_last": 24, "keep_daily": 7, "keep_weekly": 4},
    )
    encryption: EncryptionSpec = _field(
        default_factory=EncryptionSpec,
        description="Encryption of backup files.",
        example={"recipients": ["age1..."], "identity_file": "/etc/reconciler/backup.key"},
    )
    stores: StoresSpec = _field(
        default_factory=StoresSpec,
        description="Backup stores.",
        example={"local": {"path": "./data/backups"}},
    )


class DaemonSpec(_Strict):
    """How `reconciler daemon` runs: resync period, retries, shutdown, metrics, notifications."""

    resync: Duration = _field(
        60,
        description="Observe everything afresh at least this often (changes to state.yaml wake the "
        "daemon at once); a random jitter of up to 10% spreads the wake-ups.",
        example="1m",
    )
    backoff_max: Duration = _field(
        300,
        description="Longest wait between retries of a failing reconcile (exponential backoff with "
        "jitter from 2 s up to this).",
        example="5m",
    )
    verify_new_sets: bool = _field(
        True,
        description="Verify each scheduled backup set by restoring it into scratch servers before "
        "retention may delete older sets (retention keeps the newest verified set).",
        example=True,
    )
    final_backup: bool = _field(
        True,
        description="On SIGTERM/SIGINT in RAM mode, take a last backup set before exiting.",
        example=True,
    )
    shutdown_timeout: Duration = _field(
        300,
        description="Longest time a graceful shutdown may take (finishing the step in progress and the "
        "final backup); the daemon then exits anyway, leaving the journal to resume the work.",
        example="5m",
    )
    metrics_port: int | None = _field(
        9465,
        description="Port of the Prometheus /metrics and /healthz endpoint on 127.0.0.1; null disables it.",
        example=9465,
        ge=0,
        le=65535,
    )
    webhook_env: Annotated[str, Field(pattern=ENV_NAME_PATTERN)] = _field(
        "RECONCILER_WEBHOOK_URL",
        description="Environment variable holding a healthchecks.io-style ping URL (a secret: never "
        "written here). When it is set, the daemon pings <url>/start before a scheduled backup, <url> "
        "after success or recovery, and <url>/fail with the error.",
        example="RECONCILER_WEBHOOK_URL",
    )


class StateSpec(_Strict):
    """The desired state of one stack."""

    version: Literal[1] = _field(description="Format version of this file.", example=1)
    stack: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,39}$")] = _field(
        description="Name of the stack (lowercase letters, digits, - and _).", example="loomio"
    )
    runtime: Literal["local", "docker"] = _field(
        "local",
        description="`local`: services run as processes from the system's binaries; "
        "`docker`: services run in containers.",
        example="local",
    )
    mode: Literal["ram", "disk"] = _field(
        description="`ram`: data directories on tmpfs, kept safe by backups; `disk`: on persistent storage.",
        example="ram",
    )
    state_dir: str = _field(
        ".reconciler",
        description="Directory for the reconciler's own files: lock, status, journal, logs.",
        example=".reconciler",
    )
    services: ServicesSpec = _field(
        description="The stateful services.", example={"postgres": {"database": "app", "user": "app"}}
    )
    drain: DrainSpec = _field(
        default_factory=DrainSpec, description="Apps drained while data moves.", example={"containers": []}
    )
    ram: RamSpec = _field(
        default_factory=RamSpec, description="RAM mode settings.", example={"tmpfs_size": "50%"}
    )
    backup: BackupSpec = _field(
        default_factory=BackupSpec, description="Backup settings.", example={"cadence": "1h"}
    )
    daemon: DaemonSpec = _field(
        default_factory=DaemonSpec, description="Settings of `reconciler daemon`.", example={"resync": "1m"}
    )

    _base_dir: str = PrivateAttr(default="/")

    def with_base_dir(self, base_dir: str) -> StateSpec:
        """The same spec, with relative paths anchored at ``base_dir`` (the directory of state.yaml)."""
        copy = self.model_copy()
        copy._base_dir = posixpath.normpath(base_dir)
        return copy

    @property
    def base_dir(self) -> str:
        return self._base_dir

    def resolve(self, path: str) -> str:
        return posixpath.normpath(posixpath.join(self._base_dir, path))

    @property
    def ram_root(self) -> str:
        return self.resolve(self.ram.path.replace("{stack}", self.stack))

    @property
    def state_path(self) -> str:
        return self.resolve(self.state_dir)

    def ram_dir(self, service: str) -> str:
        return posixpath.join(self.ram_root, service)

    def disk_dir(self, service: str) -> str:
        return self.resolve(self.services.configured()[service].disk_dir)

    def data_dir(self, service: str) -> str:
        """Where ``service`` keeps its data in the desired mode."""
        return self.ram_dir(service) if self.mode == "ram" else self.disk_dir(service)

    def port(self, service: str) -> int:
        return self.services.configured()[service].port
