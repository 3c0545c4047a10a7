import sys

from processor.bench.cli import main

sys.exit(main())
