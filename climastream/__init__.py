"""climastream: edge-to-cloud streaming for city climate monitoring.

This package holds what every part shares: the wire contract (:mod:`climastream.contract`),
quantities and units, and the ``climastream`` command line. It imports no heavy dependency.
"""

__version__ = "0.1.0"
