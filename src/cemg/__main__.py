"""`python -m cemg ...` is the `cemg` command; it lets torchrun start it: `torchrun ... -m cemg run ...`."""

from cemg.cli import main

main()
