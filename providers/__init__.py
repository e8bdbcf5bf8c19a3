"""Provider layer: vendors' streams translated into one event vocabulary.

Knows nothing about Ray or HTTP. Vendor SDKs are imported lazily, only by the provider in use.
"""
