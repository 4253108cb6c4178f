import sys

from pictag.cli.main import main

sys.exit(main())
