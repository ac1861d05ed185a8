"""Reference sensor-node firmware (MicroPython). Not imported by the gateway."""
