"""One module per `sandbox` subcommand."""
