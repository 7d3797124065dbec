"""`python -m sdtune ...` (and `accelerate launch -m sdtune ...`) run the `sdtune` command."""

from .cli import main

main()
