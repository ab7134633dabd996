"""A Python prelude that makes ``import torch`` fail, for running nqtool as if the torch extra
were not installed (``python -c PRELUDE + "main()" ARGS``)."""

from __future__ import annotations

BLOCK_TORCH = (
    "import sys\n"
    "class _Block:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name == 'torch' or name.startswith('torch.'):\n"
    "            raise ImportError('torch is blocked in this test')\n"
    "sys.meta_path.insert(0, _Block())\n"
    "from nqformat.cli import main\n"
)
