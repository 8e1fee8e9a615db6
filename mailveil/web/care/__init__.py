"""The care console: agents settle disputes from the archive and export a checkable record."""
