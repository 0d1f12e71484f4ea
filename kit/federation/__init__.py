"""Federation: the seed pool, wire messages, aggregation, the server's state and client sync.

Pure Python/NumPy/PyTorch: no Lightning, no transformers.
"""
