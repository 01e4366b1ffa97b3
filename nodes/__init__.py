"""ComfyUI node classes: one module per node family, plus `host`, the compatibility layer."""
