"""The data layer: raw files and data sets in, :class:`Interactions` and splits out.

Nothing here knows about models or training.
"""
