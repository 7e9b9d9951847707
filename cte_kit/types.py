"""Vocabulary every floor of the kit shares; this module imports nothing from the kit.

* :class:`CTEKitWarning` - the one category of the warnings the kit addresses to its user (a
  model skipped, a bank that ties at the top, an unverified download). Filter them as usual::

      import warnings
      from cte_kit import CTEKitWarning
      warnings.simplefilter("ignore", CTEKitWarning)

  The notebooks and the command line print them as plain sentences
  (:func:`cte_kit.notebook_env.plain_warnings`).
"""

__all__ = ["CTEKitWarning"]


class CTEKitWarning(UserWarning):
    """A warning addressed to the kit's user: a plain sentence that says what happened and what to do."""
