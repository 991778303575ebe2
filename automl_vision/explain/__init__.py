"""Why a model decided: pixel attributions for classifiers, per-box saliency for detectors.

* ``params``: the request's explanation parameters (the original product's ``xai_parameters`` plus
  D-RISE's), read and checked with messages that name the field, the value and what is allowed.
* ``classification``: integrated gradients, guided backprop and guided Grad-CAM (Captum), XRAI
  (the ``saliency`` package) on a classifier's own network.
* ``detection``: D-RISE, a black-box saliency map per detected box for any detector.
* ``pictures``: the pictures answered and shown in the report.

Callers hand in a network and tensors; loading packages is serving's job.
"""
