"""Kubeflow Pipelines: one lightweight component per step, the pipeline, local and cluster runs.

The only package that imports ``kfp`` and ``kfp.kubernetes``; the library below it never does.

- ``components``: the step components, each a few lines over one library call
- ``pipeline``: the ``@dsl.pipeline``, its cluster settings (GPU pool, secrets), compiling
- ``evaluate``: scoring a model package, then its metrics and pictures (the evaluate step, ``evaluate --model``)
- ``local``: running the pipeline on kfp's local runner with our own progress display
- ``submit``: sending the pipeline to a Kubeflow Pipelines endpoint, once or on a schedule
- ``specs``: writing the committed specs in ``components/`` and ``pipelines/``

Nothing is imported here, so ``import automl_vision.pipeline`` costs nothing until a module is used.
"""
