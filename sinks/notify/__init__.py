"""Notifiers: route alert state changes to e-mail, webhooks and Alertmanager."""
