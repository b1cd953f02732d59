"""What an operator types: one command line with subcommands, `python -m <package>.ops --help` (cli.py).

beat.py, deadletters.py and purge.py hold the subcommands that need more than a few lines.
"""
