"""An independent C2SP tlog-witness: cosigns a log's checkpoints only if they extend what it saw before.

Anyone can run one (``carvault witness init|add-log|serve``); a region submits each new checkpoint to the
witnesses it is configured with (carvault.ledger.witnessing). See docs/witness.md.
"""
