"""`python -m trainers.cli ...` (and `torchrun -m trainers.cli ...`) runs the `trainers` command."""
from trainers.cli import main

main()
