"""HTTP ingress: validate, publish to Kafka, answer only after the broker's acknowledgement."""

from app.api.app import create_app

__all__ = ["create_app"]
