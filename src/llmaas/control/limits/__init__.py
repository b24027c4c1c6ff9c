"""Rate limits (requests, tokens, parallel requests per minute) in memory or Redis, and their view."""
