"""The language model: Llama-3/Qwen2 decoder, the sharding rules, the HF safetensors bridge, the sampler.

May import: nothing else of drift_jax. Everything downstream imports it.
"""
