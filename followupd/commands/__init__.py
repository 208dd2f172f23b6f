"""The `followupd` command line, one module per group of commands.

Each command parses its options, calls one function of the layers below (engine, daemon,
health, intake, demo, store, ...) and prints what came of it. `common` holds what every
command shares: the consoles, `--home`, the exit statuses, and opening the configuration,
the database and the engine. `followupd.cli` assembles the `followupd` app from these modules.
"""
