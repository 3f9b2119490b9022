"""Signed webhooks (Standard Webhooks) of job events: endpoints, the outbox, delivery with retries."""
