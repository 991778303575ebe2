"""Pictures a person can read: the augmentation preview and the run report (self-contained HTML).

    write_preview("train.jsonl", "image_classification", "preview/")   # preview.png, preview.html
    write_report("runs/my-run")                                        # runs/my-run/report.html
"""

from automl_vision.report.preview import PreviewResult, write_preview
from automl_vision.report.report import REPORT_FILE, write_report

__all__ = ["REPORT_FILE", "PreviewResult", "write_preview", "write_report"]
