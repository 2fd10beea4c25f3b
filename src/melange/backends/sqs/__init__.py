"""Amazon SQS/SNS and SQS-compatible backends (needs the ``aws`` extra: boto3)."""
