"""``python -m dynquant.bench``."""

from __future__ import annotations

from . import main

raise SystemExit(main())
