"""The gateway agent: sources -> decode -> validate -> inference -> durable buffer -> Kafka.

Installed on a Raspberry Pi with ``pip install 'climastream[edge]'``; it never imports
faust or influxdb_client.
"""
