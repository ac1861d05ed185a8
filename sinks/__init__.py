"""Consumers of the result topics: the InfluxDB writer and (later) alert notifiers.

Installed with ``pip install 'climastream[sinks]'``.
"""
