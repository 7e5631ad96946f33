"""The start-up hook of the processes a vLLM engine starts (``sitecustomize``)."""
