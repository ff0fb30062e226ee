"""The registry's web page (/ui/): server-rendered, read-only."""
