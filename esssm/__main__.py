import sys

from esssm.lab.cli import main

sys.exit(main())
