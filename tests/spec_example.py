"""The job of the spec's section 10 example (object detection on BCCD), shared by the tests that use it."""


def section_10_job(training_data: str, validation_data: str) -> str:
    """The example job as YAML text, with its data at the given URIs."""
    return f"""\
task: image_object_detection
training_data: {training_data}
validation_data: {validation_data}
limits: {{timeout_minutes: 60, max_trials: 10, max_concurrent_trials: 2}}
training_parameters: {{early_stopping: true, evaluation_frequency: 1}}
sweep:
  sampling_algorithm: random
  early_termination: {{type: bandit, evaluation_interval: 2, slack_factor: 0.2, delay_evaluation: 6}}
search_space:
  - model_name: {{type: choice, values: [yolov5]}}
    learning_rate: {{type: uniform, min_value: 0.0001, max_value: 0.01}}
    model_size: {{type: choice, values: [small, medium]}}
  - model_name: {{type: choice, values: [fasterrcnn_resnet50_fpn]}}
    learning_rate: {{type: uniform, min_value: 0.0001, max_value: 0.001}}
    optimizer: {{type: choice, values: [sgd, adam, adamw]}}
    min_size: {{type: choice, values: [600, 800]}}
"""


#: With its data as the trial pods of a cluster see it.
SPEC_10 = section_10_job("s3://automl/bccd/train.jsonl", "s3://automl/bccd/val.jsonl")
