"""python3 -m chatradio_client.eval: the chatradio-eval command."""
import sys

from .cli import main

sys.exit(main())
