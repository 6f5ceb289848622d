"""The OpenAI-compatible gateway every node serves (``[gateway]``, CONTRACT.md).

One concern per module: :mod:`.app` the HTTP routes (starlette), :mod:`.errors`
OpenAI-shaped error responses, :mod:`.auth` API keys, :mod:`.catalog` the models of
the live cluster, :mod:`.relay` the answer's chunks from the worker to the waiting
response, :mod:`.serve` the server in the node's event loop. What a request becomes
(an llm subtask) is decided in the sans-I/O :mod:`swarmd.core.gateway`.
"""
