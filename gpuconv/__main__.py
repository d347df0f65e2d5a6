"""``python -m gpuconv`` runs the ``gpuconv`` command (see gpuconv.cli)."""
from .cli import main

raise SystemExit(main())
