"""The module componentize-py builds a stage component from: it imports the
project's ``stage.py`` (which calls ``weir.export``) and exports the
``weir:pipeline/consumer`` interface on its behalf."""

import stage  # noqa: F401  (the user's stage; registers it with weir.export)
from weir._component import Consumer  # noqa: F401  (the export componentize-py looks for)
