"""Prefect tasks: caching and tracking around one core function each.

One module per stage (``ingest``, ``embed``, ``cluster``, ``meta``, ``ppt``, ``evaluate``), each a
thin wrapper over a ``metapt_core`` function; the shared machinery lives in ``cache`` (the
content-addressed artifact store that is the stage cache), ``stage`` (cache lookup, compute,
tracking), ``tracking`` (MLflow) and ``progress`` (terminal and Prefect UI progress).
"""
