import sys

from automl_vision.cli import main

sys.exit(main())
