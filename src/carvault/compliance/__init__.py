"""The rules the region enforces itself, one module each: ``consent`` (collection policy, used by car and
gateway), ``residency``, ``deletion`` (deletion requests and legal holds), ``orders`` (authority orders)."""
