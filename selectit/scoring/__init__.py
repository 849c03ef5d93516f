"""The scoring wing: model versions and prompts registered, and engines that turn rating requests
into label probabilities (torch, vLLM, an OpenAI-compatible server; third parties by entry point);
`embeddings`: a rater's mean-pooled hidden states as embedding cells, and the similar pairs they give.

May import: the base modules (errors, contract, settings, formulas) and selectit.store.
torch and transformers are imported only inside the engines (and `embeddings`' model code), never at
package import.
"""
