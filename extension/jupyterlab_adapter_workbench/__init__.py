"""Adapter Workbench in JupyterLab: the prebuilt frontend extension and its Jupyter server extension."""

__version__ = "0.1.0"


def _jupyter_labextension_paths():
    return [{"src": "labextension", "dest": "jupyterlab-adapter-workbench"}]


def _jupyter_server_extension_points():
    return [{"module": "jupyterlab_adapter_workbench"}]


def _load_jupyter_server_extension(server_app):
    """Register the REST routes (`/adapter-workbench/search`, `/adapter-workbench/info`)."""
    from .handlers import setup_handlers

    setup_handlers(server_app.web_app)
    server_app.log.info("jupyterlab_adapter_workbench: routes under /adapter-workbench registered")
