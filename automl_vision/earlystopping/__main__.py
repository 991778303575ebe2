"""``python -m automl_vision.earlystopping``: run the early-stopping service (the image's entry point)."""

import sys

from automl_vision.earlystopping.service import main

sys.exit(main())
