"""Biasing recognition towards words a client or the household gives.

`context`: the context text an engine decodes with; `correction`: the transcript corrected
towards names.
"""
