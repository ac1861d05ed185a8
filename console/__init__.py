"""The operator console: live map, streams, KPI tiles, alert inbox and gateway health.

``climastream console`` serves it (aiohttp, Server-Sent Events, fed from Kafka);
``climastream tail`` is its terminal sibling. See README.md in this folder.
"""
