"""`python -m nemotron_deploy.runtime.cli`: the command line, as the `nemotron-deploy` script runs it."""

from nemotron_deploy.runtime.cli import main

main()
