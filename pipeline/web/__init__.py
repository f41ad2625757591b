"""The web: the guarded HTTP client and what it reads from pages. The crawler is the scrape stage."""
