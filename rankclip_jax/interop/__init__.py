"""Weights from and to other codebases: OpenCLIP/OpenAI CLIP state dicts, and init_from."""
