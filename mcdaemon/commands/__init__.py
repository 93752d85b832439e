"""One module per CLI subcommand that is more than a few lines (`cli` parses and dispatches)."""
