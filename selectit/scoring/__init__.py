"""The scoring wing: model versions and prompts registered, and engines that turn rating requests
into label probabilities (torch, vLLM, an OpenAI-compatible server; third parties by entry point).

May import: the base modules (errors, contract, settings, formulas) and selectit.store.
torch and transformers are imported only inside the engines, never at package import.
"""
