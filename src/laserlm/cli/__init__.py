"""The `laser` command: `main` holds the parser and the subcommand table, `options` the shared options, and
each subcommand is a module of its own."""
