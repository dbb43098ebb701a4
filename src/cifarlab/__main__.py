"""`python -m cifarlab ...` (and `torchrun -m cifarlab train ...`)."""
from cifarlab.cli import main

raise SystemExit(main())
