"""`python -m finetune_bert.cli ...`: the same command line as `finetune-bert`."""

import sys

from finetune_bert.cli.main import main

sys.exit(main())
