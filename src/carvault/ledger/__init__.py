"""The region transparency log (docs/transparency-log.md).

``merkle`` (standard library only) and ``checkpoint`` (+ ``cryptography``) are what an offline verifier
needs; ``log`` is the server's on-disk log. Nothing is imported here, so importing
``carvault.ledger.merkle`` pulls in nothing else.
"""
