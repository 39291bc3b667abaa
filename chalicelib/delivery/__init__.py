"""Delivery of finished jobs: email through SES, Standard Webhooks over HTTPS."""
