"""Amazon SQS/SNS and SQS-compatible backends (needs the ``aws`` extra: boto3).

- :mod:`melange.backends.sqs.sqs_backend`: :class:`AWSBackend`, SQS queues and SNS topics.
- :mod:`melange.backends.sqs.localsqs` (also :mod:`melange.backends.sqs.elasticmq`):
  :class:`LocalSQSBackend` for ElasticMQ, LocalStack or moto on a host and port.
- :mod:`melange.backends.sqs.wire`: the message format shared with Melange 7.2.0.
"""
