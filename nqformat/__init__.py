"""nqformat: the .nq container for NestQuant models.

The top level is the reader side only and never imports torch: ``nqformat.open`` gives lazy
access to a file, ``NQWriter`` writes one. Converting models lives in ``nqformat.torch`` and
``nqformat.quant``.
"""

from nqformat.container.reader import NQFile, open
from nqformat.container.writer import NQWriter
from nqformat.errors import *  # noqa: F403
from nqformat.errors import __all__ as _errors_all

__version__ = "0.1.0"

__all__ = ["NQFile", "NQWriter", "__version__", "open", *_errors_all]
