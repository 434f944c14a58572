"""traintop engine: what trains. Importing it stays light: no torch here."""
