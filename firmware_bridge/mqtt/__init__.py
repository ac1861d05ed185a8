"""MQTT device payloads: generic JSON with a field mapping, SenML, and the Annex B scheme."""
