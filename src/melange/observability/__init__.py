"""Seeing a Melange service run: tracing, metrics, health probes and JSON logs.

Each part lives in its own module and imports its library only when used:

- :mod:`melange.observability.tracing`: OpenTelemetry spans for every publish and every
  handled message, the trace context carried in the message headers (``melange[otel]``).
- :mod:`melange.observability.metrics`: Prometheus counters, histograms and a gauge of a
  dispatcher's work (``melange[prometheus]``).
- :mod:`melange.observability.health`: liveness and readiness of a dispatcher over HTTP.
- :mod:`melange.observability.logs`: log records as one JSON object per line.
- :mod:`melange.observability.http`: the small HTTP server the probes and the metrics use.

Importing this package imports none of them.
"""
