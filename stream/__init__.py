"""The Faust KPI engine: readings -> dedupe -> event-time windows -> KPIs and alerts.

Installed with ``pip install 'climastream[stream]'``.
"""
