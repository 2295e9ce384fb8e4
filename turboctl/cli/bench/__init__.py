"""``turboctl bench ...``: one module per subcommand (each registers its commands on the app of
:mod:`.options`, with the options they share)."""

from . import lab, memory, niah, prompts, report, session, suite  # noqa: F401  (imported for the registration of their commands)
from .options import app

__all__ = ["app"]
