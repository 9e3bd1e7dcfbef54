"""Tagging: zero-shot label sets and their calibration (`zero_shot`), personal tags learnt from
examples (`probes`), the tag workflow (`workflow`) and XMP sidecars (`xmp`).
"""
