"""The HTTP API: the FastAPI app, its routes, auth, middleware, schemas and the one
mapping of errors to status codes."""
