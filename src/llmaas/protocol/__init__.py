"""OpenAI wire format: request models and their conversion to engine SamplingParams."""
