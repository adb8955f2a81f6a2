"""Adapter Workbench in JupyterLab: the prebuilt frontend extension and its Jupyter server extension."""

__version__ = "0.1.0"


def _jupyter_labextension_paths():
    return [{"src": "labextension", "dest": "jupyterlab-adapter-workbench"}]


def _jupyter_server_extension_points():
    from .app import AdapterWorkbenchApp

    return [{"module": "jupyterlab_adapter_workbench", "app": AdapterWorkbenchApp}]
