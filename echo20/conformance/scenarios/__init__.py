"""The conformance scenarios: ``test_server`` judges a server, ``test_client`` a client.

They need the suite's pytest plugin (``-p echo20.conformance.plugin``), which
``echo20-conformance`` loads.
"""
