"""Tables (:mod:`.tables`) and matplotlib figures (:mod:`.plots`) of rankings and correlations."""
