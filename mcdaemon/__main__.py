import sys

from mcdaemon.cli import main

sys.exit(main())
