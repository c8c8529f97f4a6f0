import sys

from dbnet.cli import main

sys.exit(main())
