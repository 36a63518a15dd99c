"""Entry point of the serving pod's init container: `python -m canaria.package --help`."""

from .cli import main

raise SystemExit(main())
