import sys

from bittern.cli import main

sys.exit(main())
