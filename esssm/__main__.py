import sys

from esssm.cli import main

sys.exit(main())
