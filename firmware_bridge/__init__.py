"""firmware_bridge: real device protocols and payload codecs, bytes in, measurements out.

Pure: no asyncio, no Kafka, no network. Every codec returns :class:`Decoded` measurements
in canonical units or a typed :class:`DecodeError` with the raw bytes, offset and reason.
"""

from firmware_bridge.model import Decoded, DecodeError, DecodeResult, Measurement, measurement

__all__ = ["DecodeError", "DecodeResult", "Decoded", "Measurement", "measurement"]
