"""Host-free library behind the nodes: pure torch/numpy, one module per concept.

Never imports ComfyUI; it receives callables (denoisers, progress callbacks) and tensors.
"""
