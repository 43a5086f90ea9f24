"""`python -m discoverd` is the `discoverd` command."""

from discoverd.cli.main import main

main()
