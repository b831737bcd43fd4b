import sys

from ward.cli import main

sys.exit(main())
