"""Pictures a person can read: the augmentation preview and the run report (self-contained HTML).

    write_preview("train.jsonl", "image_classification", "preview/")   # preview.png, preview.html
    write_report("runs/my-run", score_model=evaluate_model)  # report.html; evaluate_model: pipeline.evaluate
"""

from automl_vision.report.preview import PreviewResult, write_preview
from automl_vision.report.rescore import Evaluation
from automl_vision.report.run_report import REPORT_FILE, write_report

__all__ = ["REPORT_FILE", "Evaluation", "PreviewResult", "write_preview", "write_report"]
