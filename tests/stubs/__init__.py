"""Local stand-ins for the Gemini and Replicate HTTP APIs (127.0.0.1, random port) so the real
SDKs can be exercised offline. Each stub keeps a request log for assertions."""
