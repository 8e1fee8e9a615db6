import sys

from mailveil.cli import main

sys.exit(main())
