"""Run at the start of every Python process a vLLM engine starts (this folder is put first on
their PYTHONPATH): hides the torch extensions built for another torch, as ddpinfer's own process
did (``ddpinfer.torch_extensions``), before vLLM's engine core, its workers or its model
registry's inspection import transformers. Then runs the ``sitecustomize`` this one shadows, if
there is one."""

import importlib.util
import os
import sys


def _hide() -> None:
    try:
        from ddpinfer.torch_extensions import hide_unloadable

        hide_unloadable()
    except Exception:  # a start-up hook must never stop the process
        pass


def _chain() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    for entry in sys.path:
        candidate = os.path.join(entry or ".", "sitecustomize.py")
        if os.path.abspath(entry or ".") != here and os.path.isfile(candidate):
            spec = importlib.util.spec_from_file_location("_shadowed_sitecustomize", candidate)
            if spec is not None and spec.loader is not None:
                spec.loader.exec_module(importlib.util.module_from_spec(spec))
            return


_hide()
_chain()
