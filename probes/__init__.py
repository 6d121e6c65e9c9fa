"""Linear probes: logistic regression on a library's stored vectors, saved inside the library.

Importing this package stays cheap: torch loads only when a probe is trained.
"""
