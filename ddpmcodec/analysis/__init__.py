"""One module per table or figure; each reads results folders only and writes files."""
