"""The index folder: the SQLite source of truth (`store`, `schema`, `tag_tables`), its one record
type (`records`), the FAISS cache derived from it (`vectors`) and the single-writer lock (`lock`).

Nothing here imports torch, open_clip or the decoding code.
"""
