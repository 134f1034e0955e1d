"""Alerts: Prometheus and Alertmanager (embedded supervisor, rules, config) and the compliance side."""
