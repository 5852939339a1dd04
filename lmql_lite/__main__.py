"""`python -m lmql_lite` is the `lmql-lite` command."""
from .cli import main

raise SystemExit(main())
