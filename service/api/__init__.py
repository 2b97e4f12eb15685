"""HTTP layer: routes, request/response schemas, errors and middleware."""
