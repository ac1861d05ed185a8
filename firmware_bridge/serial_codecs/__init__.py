"""Stream decoders for sensors on a serial line: SDS011, PMS5003/7003, text lines, framed."""

from firmware_bridge.serial_codecs.base import StreamDecoder
from firmware_bridge.serial_codecs.framed import FramedDecoder
from firmware_bridge.serial_codecs.pms5003 import Pms5003Decoder
from firmware_bridge.serial_codecs.sds011 import Sds011Decoder
from firmware_bridge.serial_codecs.textline import TextLineDecoder

__all__ = ["FramedDecoder", "Pms5003Decoder", "Sds011Decoder", "StreamDecoder", "TextLineDecoder"]
