"""One module per group of CLI subcommands, each exposing ``register(subparsers)``; what they
share (error types, exit codes, common arguments) is in :mod:`trafficcast.app.commands.common`."""
