"""Monitoring as code: the Grafana dashboard's generator and the local Prometheus' config."""
