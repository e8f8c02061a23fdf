"""The charlstm gRPC server.

``server.py`` builds and runs the server; ``servicer.py`` composes the thin RPC classes
(``rpc_training.py``, ``rpc_inference.py``, ``rpc_models.py``) that turn protobuf messages into
calls on the gRPC-free core: ``jobs.py`` and ``training_worker.py`` (training in worker
processes), ``inference.py`` and ``sessions.py`` (prediction and streaming), ``model_cache.py``,
``corpora.py`` and ``store/`` (checkpoints). ``errors.py`` is the one place where domain errors
become gRPC status codes.
"""
