"""`python -m index.cli ...` runs the `pricematch` command line."""

import sys

from index.cli.parser import main

sys.exit(main())
