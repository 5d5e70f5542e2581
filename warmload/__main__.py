"""`python -m warmload` runs the CLI."""

from warmload.cli import main

raise SystemExit(main())
