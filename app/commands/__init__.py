"""One module per group of CLI subcommands; each exposes ``register(subparsers)``."""
