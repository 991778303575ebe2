"""The model registry: a registered model per job, a model version per run, and the champion.

``store`` keeps the records, in the Kubeflow Model Registry (its REST API, through the ``model-registry``
client) or, without a registry URL, in a local registry folder; ``records`` builds a version's metadata
from a run; ``gate`` decides whether a new version replaces the champion; ``register`` ties them together
so that a registration is safe to retry.
"""
