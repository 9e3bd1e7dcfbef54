"""Models: naming and finding weights, the identity an index records, the torch-side embedder, the
exported text tower and the torch-free tokenizer.

Only `embedder`, `lean_load` and `text_export` (the export half of the text tower) import torch or
open_clip, and only when used.
"""
