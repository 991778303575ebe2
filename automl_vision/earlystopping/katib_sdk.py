"""The Katib SDK, imported only where it is needed, with an error that says how to install it.

kubeflow-katib 0.19.0 pins protobuf<5 while kfp and kserve need protobuf>=6, so it is not a
dependency of the package: it is installed with ``--no-deps`` next to its other requirements
(the ``katib`` extra). Its model classes and gRPC stubs work with protobuf 6.
"""

from __future__ import annotations

from types import ModuleType

from automl_vision.errors import AutoMLError

INSTALL_HINT = ("pip install 'automl-vision[katib]' && pip install --no-deps kubeflow-katib==0.19.0 "
                "(kubeflow-katib pins protobuf<5, which kfp and kserve cannot use; without its own "
                "dependencies it works with protobuf 6)")


def import_katib() -> ModuleType:
    """``kubeflow.katib``, or an AutoMLError naming the install command."""
    try:
        import kubeflow.katib as katib  # optional: installed apart (INSTALL_HINT)
    except ImportError as e:
        raise AutoMLError(f"the Katib SDK is not installed ({e}); install it with: {INSTALL_HINT}") from None
    return katib


def import_katib_api() -> tuple[ModuleType, ModuleType]:
    """Katib's gRPC messages and stubs (``katib_api_pb2``, ``katib_api_pb2_grpc``)."""
    import_katib()
    from kubeflow.katib import katib_api_pb2, katib_api_pb2_grpc  # optional: after import_katib's message

    return katib_api_pb2, katib_api_pb2_grpc
