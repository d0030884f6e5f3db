"""Pipeline parallelism behind the stream loop (``pipe.stream(..., ranks=R)``): the ring of ranks
that split the DiT's blocks (``ring``), their messages and failure detection (``comm``), block
partitions and their balance (``partition``), and a JSON-described run on every rank
(``trial``, ``python -m accelframe_adapters.parallel``)."""
