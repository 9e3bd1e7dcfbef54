"""Getting photos into an index: walking folders (`scan`), decoding (`images`), the indexing
pipeline with its one batch committer (`pipeline`), the Ray executor, shards and merging.
"""
