"""`python -m rwkv_edge`: the same as the `rwkv-edge` command."""

import sys

from .tools.cli import main

sys.exit(main())
