"""Amazon SQS/SNS and SQS-compatible backends (needs the ``aws`` extra: boto3).

- :mod:`melange.backends.sqs.backend`: :class:`AWSBackend`, SQS queues and SNS topics:
  publishing, receiving, settling, lifecycle.
- :mod:`melange.backends.sqs.topology`: creating, looking up and deleting queues and topics;
  queue attributes, redrive policies (dead-letter queues), access policies, SNS
  subscriptions and filter policies.
- :mod:`melange.backends.sqs.connection`: the boto3 clients (session, region, endpoints,
  credentials) and how botocore's failures, network ones included, become Melange errors.
- :mod:`melange.backends.sqs.wire`: the message format shared with Melange 7.2.0, request
  entries and received messages (importable without boto3).
- :mod:`melange.backends.sqs.localsqs` (also :mod:`melange.backends.sqs.elasticmq`):
  :class:`LocalSQSBackend` for ElasticMQ, LocalStack or moto on a host and port.
- :mod:`melange.backends.sqs.sqs_backend`: the module path of earlier versions, re-exporting
  :class:`AWSBackend` and its companions.
"""
