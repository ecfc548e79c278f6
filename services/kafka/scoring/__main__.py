"""`python -m services.kafka.scoring`: the stream-scoring worker (see the package docstring)."""

from services.kafka.scoring.app import main

main()
