"""The conformance scenarios: ``test_server`` judges a server, ``test_client`` a client.

They need the suite's pytest plugin (``-p echoverse.conformance.plugin``), which
``echoverse-conformance`` loads.
"""
