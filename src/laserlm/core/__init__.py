"""The architecture table, layouts, edits, edit methods and the SVD engine: no model loading, no files."""
