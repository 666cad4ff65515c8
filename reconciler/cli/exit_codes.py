"""Exit codes, in one place (Terraform's ``-detailed-exitcode`` idea plus sysexits' EX_USAGE)."""

OK = 0  # success; for plan: in sync
ERROR = 1  # something failed (the message says what to do); plan: blocked, or drift apply cannot heal
CHANGES_PENDING = 2  # plan / apply --dry-run: applying would change something
INVALID_INPUT = 64  # state.yaml or the command line is invalid; nothing was changed
