"""LoRaWAN: Cayenne LPP, declarative binary layouts and network-server uplink envelopes."""
