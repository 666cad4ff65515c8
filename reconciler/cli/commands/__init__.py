"""One module per verb (borgmatic's ``commands/`` layout): each defines its click command, parses its
options, calls the engine and renders; ``reconciler.cli.main`` only builds the group and registers
them. Shared pieces live in ``reconciler.cli.common`` (state, error guard, ``--output``, contexts) and
``reconciler.cli.progress``."""
