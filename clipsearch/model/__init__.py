"""Models: naming and finding weights, the identity an index records, the torch-side embedder, the
exported text tower and the torch-free tokenizer.

Only `embedder` and the export half of `text_tower` import torch or open_clip, and only when used.
"""
