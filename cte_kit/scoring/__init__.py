"""Per-image scores: consistency between two predictions (:mod:`.consistency`), ground-truth metrics
(:mod:`.metrics`, truth before prediction) and rank statistics (:mod:`.ranking`), sharing one counting module."""
