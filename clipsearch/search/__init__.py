"""Answering queries from an index: parsing (`query`), ranking with filters (`ranking`), the
relevance cutoff's robust statistics (`relevance`, shared with tagging) and copies (`duplicates`).
"""
