"""DoLake: the lake writer -- CDC from the shards into Apache Iceberg, exactly once.

See dolake/README.md; the process is ``python -m dolake serve`` (:mod:`dolake.server`).
"""
