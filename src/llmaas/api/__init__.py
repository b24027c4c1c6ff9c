"""HTTP layer: FastAPI app factory, OpenAI routes, one error mapping."""
