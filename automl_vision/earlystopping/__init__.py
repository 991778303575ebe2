"""Katib early stopping with the product's own policies (spec section 7).

Katib ships only ``medianstop``. This package adds the ``bandit``, ``truncation-selection``, ``asha``
and ``hyperband`` early-stopping algorithms, computed with the same policy functions the local sweep
uses (:mod:`automl_vision.spec.termination`):

- ``rules``: policy <-> Katib settings, and the frozen stop rule a new trial gets
- ``collector``: what Katib's metrics collector does with a trial's log (parsing, rule checks)
- ``service``: the gRPC server implementing Katib's ``EarlyStopping`` API (needs the Katib SDK)
- ``katib_config``: our entries in a user's KatibConfig (``automl-vision katib-config``)

Run the service with ``python -m automl_vision.earlystopping`` (port 6788, as Katib expects).
"""
