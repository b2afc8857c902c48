"""Command-line tools: `python -m persistent.tools.<name> --help`."""
