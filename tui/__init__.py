"""traintop terminal side."""
