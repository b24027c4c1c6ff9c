"""The serving layer: OpenAI chat, text completions and embeddings over EngineClients, independent of HTTP.

Handlers take a protocol request, the caller's Principal and a request id, and return a `Served`: the
rate-limit headers of the caller's ticket and either a response dict or an async iterator of chunk dicts
(`stream: true`). The API routers, a batch worker or a Ray replica all call the same handlers; framing
(SSE, status codes) and watching the client's connection are the caller's business.
"""
