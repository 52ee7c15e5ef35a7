"""A third-party plugin: one attention backend, registered through the ``sparseflow`` entry point."""

from sparseflow.plugins import Feature, hookimpl


@hookimpl
def sparseflow_attention_backends():
    return [Feature(kind="attention_backend", name="demo_sparse_attn", summary="test plugin backend",
                    target="sparseflow_demo_plugin:Backend")]


class Backend:
    pass
