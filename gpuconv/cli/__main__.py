"""``python -m gpuconv.cli`` runs the ``gpuconv`` command, as ``python -m gpuconv`` does."""
from . import main

raise SystemExit(main())
