"""python3 -m chatradio_client: the chatradio-client command."""
import sys

from .cli import main

sys.exit(main())
