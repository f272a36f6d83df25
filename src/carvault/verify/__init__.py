"""The self-contained verification kernel: checks an incident package offline (docs/incident-package.md §4).

Imports only the wire format (``carvault.protocol``), the Merkle and checkpoint code (``carvault.ledger.merkle``,
``carvault.ledger.checkpoint``), the PKI (``carvault.pki``) and the signal catalogue (``carvault.signals``); a
test fails if it imports anything else. ``package``: the checks; ``window``: window assembly and CSV;
``edr``: the 49 CFR 563 / GB 39732 element computation.
"""
