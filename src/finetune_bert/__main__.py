"""`python -m finetune_bert ...`: the command line, as torchrun starts it (`torchrun -m finetune_bert train ...`)."""

import sys

from finetune_bert.cli.main import main

sys.exit(main())
