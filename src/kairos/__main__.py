"""Allow `python3 -m kairos`."""

from kairos.cli import main

raise SystemExit(main())
