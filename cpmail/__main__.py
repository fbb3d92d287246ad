"""`python -m cpmail` runs the command line."""

from cpmail.cli.app import main

main()
