"""`python -m naq_resilience.cli ...`: the `naq` command."""

import sys

from naq_resilience.cli import main

sys.exit(main())
